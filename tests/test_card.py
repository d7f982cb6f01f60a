"""Model cards: written at the end of training, Hub metadata, metrics, no secret, hand edits kept."""

import json
import shutil

import pytest

from genforge.cli import main

yaml = pytest.importorskip("yaml")
TINY_GPT = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
            "train.batch_size=4", "train.max_steps=2", "train.eval_every=2", "train.plot=false"]


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    head, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(head)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    corpus = root / "c.txt"
    corpus.write_text("to be or not to be, that is the question.\n" * 40)
    assert main(["train", "gpt-demo", f"data.name={corpus}", *TINY_GPT, "--run-dir", str(root / "run"),
                 "--no-progress"]) == 0
    return root / "run"


def test_training_writes_a_hub_card(text_run):
    text = (text_run / "README.md").read_text()
    meta = front_matter(text)
    assert meta["library_name"] == "genforge" and meta["license"]
    assert {"gpt", "text"} <= set(meta["tags"]) and meta["datasets"] == ["c.txt"]
    assert "base_model" not in meta  # not an RL run
    assert "- steps: 2" in text and "examples seen: 8" in text


def test_card_has_metrics_and_the_key_fingerprint_never_the_key(text_run, tmp_path, capsys):
    from genforge.watermark.keys import key_fingerprint, run_key

    run = tmp_path / "run"
    shutil.copytree(text_run, run)
    assert main(["eval", str(run)]) == 0
    key = run_key(run)  # the run's watermark key exists once text was sampled
    (run / "audit.json").write_text(json.dumps({"memorization": {"copied_8gram_share": 0.125, "pairs": [1, 2]},
                                                "bias": "n/a"}))
    assert main(["card", str(run)]) == 0
    text = (run / "README.md").read_text()
    meta = front_matter(text)
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    val = json.loads((run / "eval.json").read_text())["val_loss"]
    assert metrics["val_loss"] == pytest.approx(val, rel=1e-5) and f"| val_loss | {val:.4g} |" in text
    assert "copied_8gram_share: 0.125" in text and "pairs: 2 entries" in text
    assert key_fingerprint(key) in text
    assert key.hex() not in text and key.hex().upper() not in text
    assert key not in text.encode() and key.decode("latin-1") not in text


def test_a_broken_audit_file_does_not_stop_the_card(text_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(text_run, run)
    (run / "audit.json").write_text("{not json")
    assert main(["card", str(run)]) == 0
    assert "No audit recorded" in (run / "README.md").read_text()


def test_rl_card_names_its_base_model(text_run, tmp_path):
    run = tmp_path / "rl-run"
    shutil.copytree(text_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["rl"] = {"base_run": "/somewhere/base-gpt", "base_checkpoint": "step_0000002", "reward": ["length"],
                 "algo": "grpo"}
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["card", str(run)]) == 0
    meta = front_matter((run / "README.md").read_text())
    assert meta["base_model"] == "base-gpt" and "rl" in meta["tags"]


def test_hand_written_and_hand_edited_readmes_are_kept(text_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(text_run, run)
    assert main(["card", str(run)]) == 0  # an untouched generated card is rewritten freely
    card = run / "README.md"
    card.write_text(card.read_text().replace("## Intended use", "## Intended use\n\nMy own words."))
    assert main(["card", str(run)]) == 2
    assert "--force" in capsys.readouterr().err and "My own words." in card.read_text()
    card.write_text("# my run\n")
    assert main(["card", str(run)]) == 2 and card.read_text() == "# my run\n"
    assert main(["card", str(run), "--force"]) == 0 and front_matter(card.read_text())["library_name"] == "genforge"


def test_training_keeps_a_hand_written_readme(text_run, tmp_path, capsys):
    from genforge.card import refresh_card

    run = tmp_path / "run"
    shutil.copytree(text_run, run)
    (run / "README.md").write_text("# mine\n")
    refresh_card(run)
    assert (run / "README.md").read_text() == "# mine\n" and "model card not written" in capsys.readouterr().out


def test_report_shows_the_card(text_run, tmp_path):
    out = tmp_path / "r.html"
    assert main(["report", str(text_run), "--out", str(out)]) == 0
    page = out.read_text()
    assert "Model cards" in page and "library_name: genforge" in page
