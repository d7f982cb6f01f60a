"""Early stopping (train.early_stop_patience) on a tiny GPT: it stops, it does not stop while
the selection metric improves, and the count survives a checkpoint resume.

The validation loss is scripted as a function of the step (Trainer.evaluate is replaced), so
each test knows exactly where an uninterrupted run stops; training itself is real."""

import json

import pytest
from helpers import make_trainer

from genforge import GenforgeError
from genforge.checkpoint import latest_checkpoint
from genforge.config import load_config
from genforge.families.gpt import GPT
from genforge.runs import load_run
from genforge.train.trainer import Trainer

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
        "train.batch_size=4", "train.warmup_steps=2", "train.log_every=1", "train.eval_every=2",
        "train.checkpoint_every=1000", "train.lr=3e-3", "train.max_steps=20", "train.plot=false"]

# val loss at each evaluation step: best at 4, then 3 evaluations without a new best (6, 8, 10);
# a new best at 12 would come too late for patience 3.
BUMPY = {2: 3.0, 4: 2.0, 6: 2.5, 8: 2.4, 10: 2.1, 12: 1.9, 14: 1.8, 16: 1.7, 18: 1.6, 20: 1.5}


def tiny(corpus, *extra):
    return load_config("gpt-demo", [f"data.name={corpus}", *TINY, *extra])


@pytest.fixture
def scripted(monkeypatch):
    def use(losses):
        monkeypatch.setattr(Trainer, "evaluate", lambda self: {"loss": losses[self.step]})
    return use


def rows(run):
    return [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]


def test_it_stops_after_patience_evaluations_without_improvement(corpus, tmp_path, scripted, capsys):
    scripted(BUMPY)
    cfg, mcfg = tiny(corpus, "train.early_stop_patience=3")
    result = make_trainer(cfg, mcfg, tmp_path / "run", progress=False).fit()
    assert result["step"] == 10 and result["best_score"] == 2.0
    assert "did not improve for 3 evaluations" in result["stopped"]
    assert "step 10: stopped early: val loss did not improve for 3 evaluations" in capsys.readouterr().out
    event = [r for r in rows(tmp_path / "run") if r.get("event") == "stopped"]
    assert len(event) == 1 and event[0]["step"] == 10 and "best 2.0000 at step 4" in event[0]["reason"]
    assert max(r["step"] for r in rows(tmp_path / "run")) == 10  # nothing trained past the stop
    assert latest_checkpoint(tmp_path / "run").name == "step_0000010"
    assert load_run(tmp_path / "run").step == 4  # sample/eval default to the best checkpoint


def test_it_does_not_stop_while_improving(corpus, tmp_path, scripted):
    scripted({s: 3.0 - 0.1 * s for s in range(2, 21, 2)})
    cfg, mcfg = tiny(corpus, "train.early_stop_patience=1")
    result = make_trainer(cfg, mcfg, tmp_path / "run", progress=False).fit()
    assert result["step"] == 20 and "stopped" not in result
    assert not any(r.get("event") for r in rows(tmp_path / "run"))


def test_off_by_default_and_patience_larger_than_the_run(corpus, tmp_path, scripted):
    scripted(BUMPY)
    for name, extra in (("default", []), ("patient", ["train.early_stop_patience=4"])):
        cfg, mcfg = tiny(corpus, *extra)
        assert make_trainer(cfg, mcfg, tmp_path / name, progress=False).fit()["step"] == 20


def test_resume_keeps_the_count(corpus, tmp_path, scripted):
    """Paused at step 8 with 2 evaluations since the best: the resumed run stops at 10, as the
    uninterrupted one does (a count reset by the resume would carry on to step 20)."""
    scripted(BUMPY)
    cfg, mcfg = tiny(corpus, "train.early_stop_patience=3")
    make_trainer(cfg, mcfg, tmp_path / "run", stop_after=8, progress=False).fit()
    assert latest_checkpoint(tmp_path / "run").name == "step_0000008"
    result = make_trainer(cfg, mcfg, tmp_path / "run", resume=True, progress=False).fit()
    assert result["step"] == 10 and "stopped" in result
    assert load_run(tmp_path / "run").step == 4


def test_a_stopped_run_resumes_only_with_more_patience(corpus, tmp_path, scripted):
    scripted(BUMPY)
    cfg, mcfg = tiny(corpus, "train.early_stop_patience=3")
    make_trainer(cfg, mcfg, tmp_path / "run", progress=False).fit()
    with pytest.raises(GenforgeError, match="stopped early at step 10.*larger train.early_stop_patience") as e:
        make_trainer(cfg, mcfg, tmp_path / "run", resume=True, progress=False)
    assert "\n" not in str(e.value)
    cfg, mcfg = tiny(corpus, "train.early_stop_patience=5")
    result = make_trainer(cfg, mcfg, tmp_path / "run", resume=True, progress=False).fit()
    assert result["step"] == 20 and result["best_score"] == 1.5  # 12 was a new best: the count restarted


@pytest.mark.parametrize("extra, message", [
    (["train.early_stop_patience=-1"], "greater than or equal to 0"),
    (["train.early_stop_patience=two"], "valid integer"),
    (["train.early_stop_patience=2", "train.eval_every=0"], "counts evaluations; set eval_every > 0"),
])
def test_bad_values_are_one_line(corpus, extra, message):
    with pytest.raises(GenforgeError, match=message) as e:
        tiny(corpus, *extra)
    assert "\n" not in str(e.value)


def test_a_family_without_a_selection_metric_is_refused(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(GPT, "selection", None)
    cfg, mcfg = tiny(corpus, "train.early_stop_patience=2")
    with pytest.raises(GenforgeError, match="no selection metric"):
        make_trainer(cfg, mcfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # a failed start leaves no folder
