"""nanoGPT reference: loading a checkout, its learning-rate rule, training a model.py-shaped GPT,
and the notebook's reading of the recorded result."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nbhelpers.core.params import ParameterError
from nbhelpers.lessons import lm_reference
from nbhelpers.reporting import nanogpt_reference as ref
from tests.lm_fixtures import tiny_corpus

FAKE_MODEL = """
import torch, torch.nn as nn, torch.nn.functional as F
from dataclasses import dataclass

@dataclass
class GPTConfig:
    block_size: int = 8
    vocab_size: int = 10
    n_layer: int = 1
    n_head: int = 1
    n_embd: int = 8
    dropout: float = 0.0
    bias: bool = True

class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size)
    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        return torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas,
                                 weight_decay=weight_decay)
    def forward(self, idx, targets=None):
        logits = self.head(self.emb(idx))
        if targets is None:
            return logits[:, [-1], :], None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus(tmp_path_factory)


@pytest.fixture
def fake_checkout(tmp_path):
    (tmp_path / "model.py").write_text(FAKE_MODEL)
    return tmp_path


def test_missing_checkout_is_refused(tmp_path):
    with pytest.raises(ParameterError, match="--nanogpt"):
        ref.load_nanogpt(tmp_path)


def test_model_py_without_gpt_is_refused(tmp_path):
    (tmp_path / "model.py").write_text("x = 1\n")
    with pytest.raises(ParameterError, match="GPT"):
        ref.load_nanogpt(tmp_path)


def test_cli_refuses_a_wrong_folder_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out.json"
    assert ref.main(["--nanogpt", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert not out.exists()
    assert "--nanogpt" in capsys.readouterr().err


def test_nanogpt_lr_follows_train_py():
    lr, w, n, lo = 3e-3, 100, 1500, 3e-4
    assert ref.nanogpt_lr(0, lr, w, n, lo) == pytest.approx(lr / 101)
    assert ref.nanogpt_lr(99, lr, w, n, lo) == pytest.approx(lr * 100 / 101)
    assert ref.nanogpt_lr(100, lr, w, n, lo) == pytest.approx(lr)  # cosine starts at the peak
    assert ref.nanogpt_lr(800, lr, w, n, lo) == pytest.approx(lo + 0.5 * (lr - lo))  # half way
    assert ref.nanogpt_lr(1500, lr, w, n, lo) == pytest.approx(lo)
    assert ref.nanogpt_lr(2000, lr, w, n, lo) == lo


def test_all_positions_returns_every_logit(fake_checkout, corpus):
    module = ref.load_nanogpt(fake_checkout)
    gpt = module.GPT(module.GPTConfig(vocab_size=corpus.vocab.size))
    x = torch.randint(0, corpus.vocab.size, (3, 8)).t()  # not contiguous
    out = ref.AllPositions(gpt, 8)(x)
    assert out.shape == (8, 3, corpus.vocab.size)
    assert torch.equal(out, gpt.head(gpt.emb(x)))


def test_train_nanogpt_learns_and_is_seeded(fake_checkout, corpus, monkeypatch):
    module = ref.load_nanogpt(fake_checkout)
    monkeypatch.setattr(ref, "SHAPE", {**ref.SHAPE, "block_size": 16, "n_embd": 8})
    model, seconds = ref.train_nanogpt(module, corpus, steps=101, seed=0)
    again, _ = ref.train_nanogpt(module, corpus, steps=101, seed=0)
    assert seconds > 0 and not model.training
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)  # seeded: the same init and batches, the same weights
    x = corpus.ids("validation")[:16].unsqueeze(0)
    with torch.no_grad():
        nats = torch.nn.functional.cross_entropy(model(x)[0, :-1], x[0, 1:])
    assert float(nats) < math.log(corpus.vocab.size)  # below the uniform guess
    with pytest.raises(ParameterError, match="steps"):
        ref.train_nanogpt(module, corpus, steps=100)  # no step after the 100 warm-up steps


RECORDED = {
    "steps": 1500,
    "seed": 0,
    "characters_scored": 513024,
    "threads": 1,
    "batch_size": 32,
    "lr": 0.003,
    "warmup_steps": 100,
    "shape": {"block_size": 128, "n_layer": 4, "n_head": 4, "n_embd": 128},
    "nanogpt_bpc": 2.40,
    "nanogpt_interval": [2.39, 2.41],
    "nanogpt_train_seconds": 500.0,
    "baseline_bpc": 2.33,
    "baseline_interval": [2.32, 2.34],
    "baseline_train_seconds": 520.0,
    "baseline_minus_nanogpt": {"difference": -0.07, "low": -0.08, "high": -0.06},
    "nanogpt_commit": "abc",
    "command": "python -m ...",
    "machine": "m",
    "date": "2026-12-06",
}
RUN = {
    "context": 128,
    "width": 128,
    "depth": 4,
    "heads": 4,
    "steps": 1500,
    "seed": 0,
    "characters_scored": 513024,
    "batch_size": 32,
    "lr": 0.003,
    "warmup_steps": 100,
}


def test_reference_applies_only_at_its_settings(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(RECORDED))
    rec = lm_reference.load_reference(path)
    assert lm_reference.applies(rec, RUN)
    assert not lm_reference.applies(rec, {**RUN, "steps": 300})
    assert not lm_reference.applies(rec, {**RUN, "lr": 0.001})
    old = {k: v for k, v in RECORDED.items() if k != "batch_size"}
    assert not lm_reference.applies(old, RUN)  # a reference without the setting never applies
    assert lm_reference.load_reference(tmp_path / "none.json") is None
    assert len(lm_reference.reference_table(rec, RUN, 2.33)) == 3
    other = lm_reference.reference_table(rec, {**RUN, "width": 32}, 3.0)
    assert "other settings" in other["note"].iloc[0]


def test_reference_targets():
    met, fast = lm_reference.reference_targets(RECORDED, RUN, 520.0)
    assert met["met"] and met["decided"] and met["high"] == -0.06
    assert fast["met"]
    worse = {**RECORDED, "baseline_minus_nanogpt": {"difference": 0.01, "low": -0.01, "high": 0.03}}
    row, slow = lm_reference.reference_targets(worse, RUN, 700.0)
    assert not row["met"] and not row["decided"] and not slow["met"]
    only = lm_reference.reference_targets(RECORDED, {**RUN, "seed": 1}, 10.0)
    assert [t["name"] for t in only] == ["baseline training time"]
