"""The torch heads' public interface for training their module elsewhere (heads.finetune trains it
with the frontend): build_module, module_loss, frame_targets, decode, from_trained_module. A head
made from a trained module predicts what the module computes; nothing outside a head's own file
calls the heads' private methods."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from heads.clip_heads import LinearHead, MLPHead
from heads.frame_heads import CRFHead, FrameClassifierHead
from heads.persist import load_head

ROOT = Path(__file__).resolve().parents[1]
CLASSES = np.array(["alto", "bass", "soprano", "tenor"])


def _trained(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every weight away from its initialisation (as training would), deterministically."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return module


@pytest.mark.parametrize("cls,params", [(LinearHead, {"lr": 1e-2}), (MLPHead, {"lr": 1e-2, "hidden": 16})])
def test_a_clip_head_from_a_trained_module_predicts_what_the_module_computes(cls, params, tmp_path):
    L, D = 3, 8
    est = cls(**params)
    module = _trained(est.build_module(L, D, len(CLASSES))).eval()
    history = [{"epoch": 0, "val": 0.25}, {"epoch": 1, "val": 0.75}]
    head = cls.from_trained_module(module, classes=CLASSES, class_weights=[1.0, 2.0, 1.0, 0.5], history=history,
                                   best_epoch=1, **est.get_params())
    X = np.random.default_rng(0).standard_normal((6, L, D)).astype(np.float32)
    with torch.no_grad():
        logits = module(torch.from_numpy(X)).numpy().astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(head.predict_proba(X), p / p.sum(1, keepdims=True), rtol=1e-6, atol=1e-7)
    assert list(head.predict(X)) == list(CLASSES[logits.argmax(1)])
    assert head.n_layers_in_ == L and head.n_features_in_ == D and head.layers_used_ == [0, 1, 2]
    assert head.lr_ == 1e-2 and head.lr_scores_ == {1e-2: 0.75} and head.best_epoch_ == 1
    np.testing.assert_allclose(head.layer_weights_, torch.softmax(module.sum.logits, 0).detach().numpy())
    np.testing.assert_array_equal(head.class_weight_, [1.0, 2.0, 1.0, 0.5])
    assert head.module_ is not module                         # a copy: the caller's module is left alone
    head.save(tmp_path / "head.json")                          # and it saves and loads like a fitted head
    np.testing.assert_allclose(load_head(tmp_path / "head.json").predict_proba(X), head.predict_proba(X))


def test_clip_module_loss_is_the_weighted_cross_entropy_of_the_pooled_frames():
    est = LinearHead()
    module = _trained(est.build_module(2, 4, 3))
    h = torch.randn(2, 5, 2, 4)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    y, w = torch.tensor([2, 0]), torch.tensor([1.0, 0.5, 2.0])
    pooled = torch.stack([h[0].mean(0), h[1, :2].mean(0)])      # each row's valid frames only
    logp = torch.log_softmax(module(pooled), 1)
    want = -(w[y] * logp[torch.arange(2), y]).sum() / w[y].sum()
    torch.testing.assert_close(est.module_loss(module, h, y, mask, class_weight=w), want)
    torch.testing.assert_close(est.module_loss(module, pooled, y, class_weight=w), want)


def test_from_trained_module_refuses_what_it_cannot_stand_for():
    module = LinearHead().build_module(3, 8, 4)
    with pytest.raises(ValueError, match="shape of MLPHead.build_module"):
        MLPHead.from_trained_module(module, classes=CLASSES, hidden=16)
    with pytest.raises(ValueError, match="lr="):
        LinearHead.from_trained_module(module, classes=CLASSES, lr="1e-3,1e-2")
    with pytest.raises(ValueError, match="layers="):
        LinearHead.from_trained_module(module, classes=CLASSES, layers=[0, 1, 2])
    with pytest.raises(ValueError, match="epochs="):
        LinearHead.from_trained_module(module, classes=CLASSES, epochs=0)
    with pytest.raises(ValueError, match="class_weights"):
        LinearHead.from_trained_module(module, classes=CLASSES, class_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="frame_rate"):
        CRFHead.from_trained_module(CRFHead().build_module(2, 8, frame_rate=50.0), frame_rate=0.0)
    with pytest.raises(ValueError, match="expected the module of CRFHead"):
        CRFHead.from_trained_module(module, frame_rate=50.0)


@pytest.mark.parametrize("cls,params", [(CRFHead, {"context": 0.1, "context_width": 8}),
                                        (FrameClassifierHead, {})])
def test_a_frame_head_from_a_trained_module_decodes_what_the_module_computes(cls, params, tmp_path):
    L, D, rate = 2, 8, 50.0
    est = cls(lr=1e-2, **params)
    module = _trained(est.build_module(L, D, frame_rate=rate)).eval()
    head = cls.from_trained_module(module, frame_rate=rate, history=[{"epoch": 0, "val": 0.5}], best_epoch=0,
                                   **est.get_params())
    assert head.frame_rate_ == rate and head.context_frames_ == round(params.get("context", 0.0) * rate)
    rng = np.random.default_rng(1)
    clips = [rng.standard_normal((n, L, D)).astype(np.float32) for n in (40, 25)]
    offsets = [0.5, 2.0]
    want = []
    with torch.no_grad():
        for x, off in zip(clips, offsets):                      # the module run directly, clip by clip
            xt = torch.from_numpy(x)[None]
            mask = torch.ones((1, len(x)), dtype=torch.bool)
            want.append(est.decode(module, module(xt, mask), mask, [off], frame_rate=rate)[0])
    got = head.predict(clips, offsets)
    assert [np.asarray(n).tolist() for n in got] == [np.asarray(n).tolist() for n in want]
    assert any(len(n) for n in want)                            # something was decoded
    head.save(tmp_path / "head.json")
    assert [np.asarray(n).tolist() for n in load_head(tmp_path / "head.json").predict(clips, offsets)] == \
        [np.asarray(n).tolist() for n in want]


def test_frame_targets_and_loss_are_what_fit_trains_on():
    """CRF: the targets are note states on the frame grid (onset at the note's first frame, sustain
    after, silence elsewhere) and the loss is the CRF's negative log-likelihood per valid frame."""
    est = CRFHead()
    t = est.frame_targets([[0.2, 0.4, 60]], 30, 0.0, frame_rate=50.0)["states"]
    st = est.states_
    assert t.shape == (30,) and t.dtype == torch.long
    assert t[10] == st.encode([[0.2, 0.4, 60]], 30, 50.0, 0.0)[10] != t[9]
    assert set(t[:10].tolist()) == set(t[20:].tolist()) and len(set(t[11:20].tolist())) == 1
    module = _trained(est.build_module(2, 4, frame_rate=50.0))
    x = torch.randn(1, 30, 2, 4)
    mask = torch.ones((1, 30), dtype=torch.bool)
    nll = module.crf.nll(module(x, mask), t[None], mask, reduction="sum")
    torch.testing.assert_close(est.module_loss(module, x, {"states": t[None]}, mask), nll / 30)


PRIVATE = {"_make_head", "_make_module", "_targets", "_loss", "_decode"}
HEAD_FILES = {"heads/clip_heads.py", "heads/frame_heads.py"}


def test_no_module_reaches_into_the_heads_private_methods():
    hits = []
    for folder in ("heads", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in HEAD_FILES:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Attribute) and node.attr in PRIVATE:
                    hits.append(f"{rel}:{node.lineno}: .{node.attr}")
    assert not hits, "private head methods used outside the heads: " + "; ".join(hits)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_head_files_import_one_way_and_load_checks_the_class(tmp_path):
    """heads.persist imports the heads; the heads and the file format (heads.head_codec) import
    neither heads.persist nor each other's way back, not even inside a function."""
    for f in ("heads/clip_heads.py", "heads/frame_heads.py", "heads/head_codec.py"):
        assert "heads.persist" not in _imports(ROOT / f), f
    assert not _imports(ROOT / "heads/head_codec.py") & {"heads.clip_heads", "heads.frame_heads"}
    X = np.random.default_rng(0).standard_normal((12, 2, 4)).astype(np.float32)
    y = np.array(["a", "b"] * 6)
    MLPHead(hidden=4, epochs=2).fit(X, y).save(tmp_path / "head.json")
    with pytest.raises(TypeError, match="holds a MLPHead, not a LinearHead"):
        LinearHead.load(tmp_path / "head.json")
    np.testing.assert_allclose(MLPHead.load(tmp_path / "head.json").predict_proba(X),
                               load_head(tmp_path / "head.json").predict_proba(X))
