"""What needs a CUDA GPU: the Triton kernels, the routed forward and the commands on one. Skipped without.

`make gpu-check` (benchmarks/gpu_check.py) runs this file alone on a lent GPU machine. In a whole-suite
run tests/test_triton_kernels.py switches Triton to its CPU interpreter for the process, so the
kernel tests here skip then: the kernels must be compiled for the GPU to be tested on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ftp_deploy.models import load_base_model
from ftp_deploy.placement import Placement
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from tests.conftest import random_batch, tiny_model, tiny_tokenizer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
]
CUDA = "cuda:0"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def same_bits(got: torch.Tensor, want: torch.Tensor) -> bool:
    got, want = got.cpu(), want.cpu()
    if got.dtype != want.dtype or got.shape != want.shape:
        return False
    return torch.equal(got.contiguous().view(torch.uint8), want.contiguous().view(torch.uint8))


@pytest.fixture(scope="module")
def kernels():
    pytest.importorskip("triton", reason="triton not installed: pip install 'ftp-deploy[triton]'")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("Triton's CPU interpreter is on in this process; run this file alone (make gpu-check)")
    from ftp_deploy.plugins.token_compaction import launch

    return launch


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("batch", "seq_len", "dim", "num"),
    [(2, 1000, 64, 300), (1, 6000, 128, 300), (2, 257, 100, 0), (3, 50, 64, 980), (2, 2048, 4096, 300)],
)
def test_triton_kernels_on_cuda_match_the_reference_bit_for_bit(
    kernels, dtype: torch.dtype, batch: int, seq_len: int, dim: int, num: int
) -> None:
    """(1, 6000) at sparsity 0.3 keeps K = 4200, beyond TensorRT TopK's 3840."""
    from ftp_deploy.plugins.token_compaction.reference import token_compact, token_scatter

    gen = torch.Generator().manual_seed(seq_len + dim)
    hidden = torch.randn(batch, seq_len, dim, generator=gen).to(dtype)
    scores = torch.randint(0, 7, (batch, seq_len), generator=gen).float()  # ties on purpose
    want_compact, want_indices = token_compact(hidden, scores, num)
    got_compact, got_indices = kernels.token_compact_triton(hidden.to(CUDA), scores.to(CUDA), num)
    assert same_bits(got_indices, want_indices) and same_bits(got_compact, want_compact)
    if seq_len == 6000:
        assert want_indices.shape[1] == 4200
    updated = want_compact * 2
    got = kernels.token_scatter_triton(hidden.to(CUDA), updated.to(CUDA), want_indices.to(CUDA))
    assert same_bits(got, token_scatter(hidden, updated, want_indices))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small LLaMA, wider than the CPU tests' (so the GPU's kernels differ from the CPU's), on disk."""
    folder = tmp_path_factory.mktemp("gpu") / "llama"
    tiny_model("llama", num_layers=4, hidden_size=256, intermediate_size=688, num_attention_heads=8).save_pretrained(
        folder
    )
    tiny_tokenizer().save_pretrained(folder)
    return folder


def routed_pair(model_dir: Path, dtype: str, spec: RouterSpec) -> tuple[RoutedModel, RoutedModel]:
    cpu = load_base_model(str(model_dir)).model
    gpu = load_base_model(str(model_dir), Placement(CUDA, dtype)).model
    schedule = Schedule.from_sparsities([0.1, 0.2, 0.3, 0.4])
    torch.manual_seed(0)
    on_cpu = RoutedModel(cpu, schedule, spec)
    on_gpu = RoutedModel(gpu, schedule, spec)
    if on_cpu.router is not None and on_gpu.router is not None:
        on_gpu.router.load_state_dict(on_cpu.router.state_dict())
    return on_cpu, on_gpu


@pytest.mark.parametrize("spec", [RouterSpec(kind="static"), RouterSpec()], ids=["static", "learned"])
def test_routed_forward_on_cuda_matches_the_cpu_in_fp32(model_dir: Path, spec: RouterSpec) -> None:
    on_cpu, on_gpu = routed_pair(model_dir, "fp32", spec)
    ids, mask = random_batch(2, 200, "left")
    with torch.no_grad():
        want, got = on_cpu(ids, mask), on_gpu(ids, mask)  # CPU inputs: the outputs come back to the CPU
    assert got.logits.device.type == "cpu"
    torch.testing.assert_close(got.logits, want.logits, atol=2e-4, rtol=1e-4)
    agreement = torch.cat([(g == w).float().flatten() for g, w in zip(got.indices, want.indices, strict=True)])
    assert float(agreement.mean()) >= 0.99
    with torch.no_grad():  # inputs already on the GPU stay there
        assert on_gpu(ids.to(CUDA), mask.to(CUDA)).logits.device.type == "cuda"


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_routed_forward_on_cuda_in_half_precision_stays_near_fp32(model_dir: Path, dtype: str) -> None:
    on_cpu, on_gpu = routed_pair(model_dir, dtype, RouterSpec())
    ids, mask = random_batch(2, 200, "left")
    with torch.no_grad():
        want, got = on_cpu(ids, mask), on_gpu(ids, mask)
    assert on_gpu.router is not None and next(on_gpu.router.parameters()).dtype == torch.float32
    scale = float(want.logits.abs().max())
    assert float((got.logits.float() - want.logits).abs().max()) < 0.05 * scale
    top1 = (got.logits.argmax(-1) == want.logits.argmax(-1)).float()[mask.bool()].mean()
    assert float(top1) >= 0.9


def test_compact_and_masked_modes_agree_on_cuda(model_dir: Path) -> None:
    _, on_gpu = routed_pair(model_dir, "fp32", RouterSpec())
    ids, mask = random_batch(2, 300, "right")
    with torch.no_grad():
        compact = on_gpu(ids.to(CUDA), mask.to(CUDA), mode="compact")
        masked = on_gpu(ids.to(CUDA), mask.to(CUDA), mode="masked")
    valid = mask.bool().to(CUDA)
    torch.testing.assert_close(compact.logits[valid], masked.logits[valid], atol=2e-4, rtol=1e-4)
    for a, b in zip(compact.keep, masked.keep, strict=True):
        assert torch.equal(a & valid, b & valid)


def test_checkpointed_training_step_uses_less_memory_for_the_same_loss(model_dir: Path) -> None:
    from ftp_deploy.training.config import LossWeights, TrainConfig
    from ftp_deploy.training.trainer import RouterTrainer, new_router

    base = load_base_model(str(model_dir), Placement(CUDA, "fp32")).model
    blocks = torch.randint(4, 90, (2, 512), generator=torch.Generator().manual_seed(0))
    found = []
    for checkpointed in (False, True):
        trainer = RouterTrainer(
            base,
            Schedule.uniform(0.3, 4),
            blocks,
            TrainConfig(steps=4, batch_size=2, scored=32),
            LossWeights(),
            new_router(0),
            0,
            checkpoint_activations=checkpointed,
        )
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        loss = trainer.train_step().loss
        found.append((loss, torch.cuda.max_memory_allocated() - before))
    (loss_plain, peak_plain), (loss_checkpointed, peak_checkpointed) = found
    assert loss_checkpointed == pytest.approx(loss_plain, rel=1e-5)
    assert peak_checkpointed < 0.6 * peak_plain


def test_the_commands_run_on_cuda(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """run, train, eval, export (its reference on the GPU) and verify, each with --device cuda."""
    pytest.importorskip("matplotlib", reason="train and eval draw their charts with matplotlib")
    from ftp_deploy import cli

    text = tmp_path / "text.txt"
    gen = torch.Generator().manual_seed(0)
    text.write_text(" ".join(f"w{int(i)}" for i in torch.randint(0, 90, (3000,), generator=gen)), encoding="utf-8")
    model, cuda = ["--model", str(model_dir)], ["--device", "cuda"]
    assert cli.main(["run", *model, "--prompt", "w1 w2 w3 w4", "--max-new-tokens", "3", *cuda, "--dtype", "bf16"]) == 0
    train = ["train", *model, "--data", str(text), "--seq-len", "64", "--scored", "8", "--steps", "4"]
    train += ["--ga-population", "3", "--ga-generations", "1", "--finetune-generations", "1", "--out"]
    assert cli.main([*train, str(tmp_path / "run"), *cuda, "--checkpoint-activations"]) == 0
    tasks = ["--tasks", f"ppl:{text}", "--baselines", "dense,static", "--limit", "4", "--seq-len", "64"]
    assert cli.main(["eval", str(tmp_path / "run"), *tasks, "--scored-tokens", "8", *cuda]) == 0
    assert cli.main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "art"), *cuda]) == 0
    assert cli.main(["verify", str(tmp_path / "art"), "--seq-lens", "", *cuda]) == 0
    capsys.readouterr()
