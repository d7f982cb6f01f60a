"""RL on SMILES: oracle calls counted as PMO counts them (distinct canonical molecules of training
rollouts; never invalid ones, the pre-flight or evaluations), prompts that are part of the
molecule, and an ``oracle.csv`` that matches the checkpoint after an interrupt."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from genforge.cli import main

pytest.importorskip("rdkit")

TINY_GPT = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=40",
            "train.batch_size=16", "train.eval_every=100", "train.eval_batches=2", "train.plot=false",
            "train.checkpoint_every=100", "train.lr=3e-3", "train.warmup_steps=5"]


def _rows(run_dir, split=None):
    rows = [json.loads(r) for r in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") == split]


MOLECULES = ["CCO", "CC(=O)Oc1ccccc1C(=O)O", "c1ccccc1", "CCN(CC)CC", "CC(C)Cc1ccc(C(C)C(=O)O)cc1",
             "O=C(O)c1ccccc1O", "CCOc1ccc(NC(C)=O)cc1", "CC(=O)c1ccc(O)cc1", "NC(=O)c1cccnc1",
             "Oc1ccc(Cl)cc1Cl", "CC1CCCCC1N", "OCCN1CCOCC1", "CCN1CCN(c2ccccc2)CC1", "COc1ccccc1N",
             "O=C(Nc1ccccc1)c1ccccc1", "CCCCCCCC(=O)O", "CS(=O)(=O)c1ccc(C)cc1", "c1ccc(cc1)-c1ccncc1"]


@pytest.fixture(scope="module")
def mol_base(tmp_path_factory):
    pytest.importorskip("rdkit")
    tmp = tmp_path_factory.mktemp("rl-mol")
    smi = tmp / "mols.smi"
    smi.write_text("\n".join(MOLECULES * 3) + "\n")
    base = tmp / "base"
    assert main(["train", "gpt-demo", f"data.name={smi}", "train.max_steps=120", *TINY_GPT,
                 "--run-dir", str(base), "--no-progress"]) == 0
    return base


def test_molecule_rl_counts_oracle_calls_and_writes_them(mol_base, tmp_path):
    from genforge.metrics.molecules import canonicalize

    run = tmp_path / "rl"
    assert main(["rl", str(mol_base), "--reward", "qed", "--reward", "validity=0.5", "--steps", "20",
                 "--batch-size", "16", "--max-oracle-calls", "12", "--diversity-filter", "5",
                 "--eval-samples", "8", "--run-dir", str(run), "--no-progress"]) == 0
    rows = _rows(run)
    assert rows[-1]["event"] == "stopped" and "oracle budget spent" in rows[-1]["reason"]
    oracle = (run / "oracle.csv").read_text().splitlines()
    assert oracle[0] == "call,smiles,score,qed,validity"
    calls = len(oracle) - 1
    smiles = [line.split(",")[1] for line in oracle[1:]]
    assert 12 <= calls == len(set(smiles)) == rows[-1]["oracle_calls"]  # each distinct molecule once
    assert all(canonicalize(s) == s for s in smiles)  # valid, canonical: what PMO counts
    train = [r for r in rows if "event" not in r]
    assert {"top1", "top10", "auc_top10", "intdiv", "valid", "filtered"} <= set(train[-1])


INTERRUPTING_REWARD = '''
import os
import signal

from genforge.rl.rewards import qed

CALLS = [0]


def qed_then_ctrl_c(samples):
    """QED; sends this process SIGINT (Ctrl-C) on its third call (the first training rollout)."""
    CALLS[0] += 1
    if CALLS[0] == 3:
        os.kill(os.getpid(), signal.SIGINT)
    return qed(samples)
'''


def test_prompted_rollouts_score_whole_molecules_and_only_training_calls_count(mol_base, tmp_path, monkeypatch):
    from genforge.metrics.molecules import canonicalize
    from genforge.rl import specs
    from genforge.rl.policy import SequencePolicy
    from genforge.rl.rollouts import Rollouts

    training, diversity_saw, in_training = [], [], [False]
    collect, rollout = Rollouts._collect, SequencePolicy.rollout_batch

    def spy_collect(self):
        in_training[0] = True
        try:
            return collect(self)
        finally:
            in_training[0] = False

    def spy_rollout(self, rows, generator):
        roll = rollout(self, rows, generator)
        if in_training[0]:
            training.extend(roll.samples)
        return roll

    spec = specs.SPECS["molecule"]
    monkeypatch.setitem(specs.SPECS, "molecule", dataclasses.replace(
        spec, diversity=lambda s: diversity_saw.extend(s) or spec.diversity(s)))
    monkeypatch.setattr(Rollouts, "_collect", spy_collect)
    monkeypatch.setattr(SequencePolicy, "rollout_batch", spy_rollout)
    run = tmp_path / "rl"
    assert main(["rl", str(mol_base), "--reward", "qed", "--prompt", "c1ccccc1", "--steps", "3", "--batch-size", "16",
                 "--eval-samples", "8", "train.eval_every=1", "--run-dir", str(run), "--no-progress"]) == 0
    # the SMILES prefix is part of every molecule that rewards and diversity see
    assert len(training) == 48 and all(s.startswith("c1ccccc1") for s in training + diversity_saw)
    expected = {c for c in map(canonicalize, training) if c is not None}
    assert expected  # the prompt keeps the cache on (it was off with --prompt)
    oracle = [line.split(",")[1] for line in (run / "oracle.csv").read_text().splitlines()[1:]]
    # exactly the distinct valid canonical molecules of the training rollouts: the pre-flight and
    # the 4 evaluations (32 samples) added none, invalid SMILES none
    assert sorted(oracle) == sorted(expected)
    last = _rows(run)[-1]
    assert last["oracle_calls"] == len(expected) and last["top1"] >= last["top10"] > 0


def test_oracle_csv_matches_the_checkpoint_after_ctrl_c(mol_base, tmp_path):
    from genforge import checkpoint as ckpt

    rewards = tmp_path / "interrupting.py"
    rewards.write_text(INTERRUPTING_REWARD)
    run = tmp_path / "rl"
    code = main(["rl", str(mol_base), "--reward", f"{rewards}:qed_then_ctrl_c", "--steps", "50", "--batch-size", "16",
                 "--eval-samples", "8", "--run-dir", str(run), "--no-progress"])
    assert code == 130  # SIGINT: checkpoint at the step boundary, then stop
    state = ckpt.load_train_state(ckpt.require_checkpoint(run, "latest"))
    calls = state["batches"]["reward"]["calls"]
    oracle = (run / "oracle.csv").read_text().splitlines()
    assert calls > 0 and len(oracle) - 1 == calls and state["step"] == 1
