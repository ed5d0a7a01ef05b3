"""torch.nn.Module tasks: the flat-buffer adapter, per-worker buffers, registries, devices.

The adapter's gradients (one worker ``[d]``, stacked ``[m, d]`` through the batched form and
through ``vmap``) must equal plain autograd on separate ``nn.Module`` copies, BatchNorm
statistics included; a user task comes in through ``imports:``; ResNet and GPT runs agree
across SimPy, stacked and the real backends (MPI and torch.distributed/gloo, 4 processes).
GPU tests skip with the reason where no CUDA GPU is present.
"""
from __future__ import annotations

import textwrap

import pytest
import torch
import yaml

from harness.config import ConfigError, expand, load
from harness.experiment import simulate
from harness.tasks import TASKS, Sampler, build_task, register_task
from harness.tasks.fixtures import write_cifar10, write_text
from harness.tasks.module import TaskDataError

PLUGIN = '''
from typing import Literal

import torch
from torch import nn

from harness.tasks import ModuleParams, ModuleTask, register_task
from harness.tasks.partition import iid
from harness.models.compute import register_compute


class Net(nn.Module):
    stackable = True

    def __init__(self, width):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((-2, -1)))


class BlobParams(ModuleParams):
    name: Literal["blobs"] = "blobs"
    width: int = 4
    batch_size: int = 8


@register_task("blobs")
class Blobs(ModuleTask):
    """Three classes of noisy 6x6 images whose mean brightness is the label."""
    Params = BlobParams

    def __init__(self, params, n_workers, seed):
        g = torch.Generator().manual_seed(0)
        self.y_all = torch.randint(0, 3, (120,), generator=g)
        self.x_all = torch.randn(120, 1, 6, 6, generator=g) + self.y_all.view(-1, 1, 1, 1).double()
        self.n_train, self.n_test = 90, 30
        self.shards = iid(self.y_all[:90].numpy(), params.n_parts(n_workers), seed)
        self.setup(params, n_workers, seed)
        self.x_all, self.y_all = self.x_all.to(self.device, self.dtype), self.y_all.to(self.device)

    def build_module(self):
        return Net(self.params.width)

    def fetch(self, split, idx, augment):
        i = idx.to(self.device) + (0 if split == "train" else self.n_train)
        return self.x_all[i], self.y_all[i]


@register_compute("half_constant")
def half_constant(times, i):
    return times.spec.params.get("seconds", 1.0) / 2
'''

ALGS = {"local_sgd": {"name": "local_sgd", "period": 2, "lr": 0.05, "momentum": 0.9},
        "sync_sgd": {"name": "sync_sgd", "lr": 0.05, "momentum": 0.9},
        "diloco": {"name": "diloco", "period": 2, "inner": "adamw", "lr": 0.003},
        "palsgd": {"name": "palsgd", "period": 2, "p": 0.5, "eta": 0.05}}


def run_cfg(task: dict, backend: str = "simpy", alg: str = "local_sgd", **over):
    """A small float64 run: 4 workers, 6 steps, lognormal compute, a slow network."""
    raw = {"n_workers": 4, "steps": 6, "eval_every": 3, "seed": 1, "backend": backend, "task": task,
           "compute": {"model": "lognormal", "sigma": 0.3}, "network": {"latency_s": 0.001, "bandwidth_Bps": 1e7},
           "algorithm": ALGS[alg], **over}
    return expand(raw)[0]


def assert_same_runs(cfg, tol=1e-8):
    """SimPy and stacked end with the same parameters and table (float64, ``tol``)."""
    (da, xa), (db, xb) = (simulate(cfg.model_copy(update={"backend": b})) for b in ("simpy", "stacked"))
    assert xa.shape == xb.shape and (xa - xb).abs().max().item() < tol
    assert (xa - cfg_init(cfg)).abs().max().item() > 1e-4  # it trained
    a, b = (d.sort_values(["worker", "step"]).reset_index(drop=True) for d in (da, db))
    for col in ("train_loss", "test_loss", "test_acc", "time_s", "bytes_sent"):
        assert (a[col].fillna(0) - b[col].fillna(0)).abs().max() < tol, col
    return a


def cfg_init(cfg):
    return build_task(cfg.task, cfg.n_workers, cfg.seed).init_params(cfg.seed)


def plain_grads(task, P, idx):
    """Loss, gradient and module buffers of separate nn.Module copies, ordinary autograd."""
    out = []
    for i in range(P.shape[0]):
        m = task._build(0)
        torch.nn.utils.vector_to_parameters(P[i].clone(), m.parameters())
        x, y = task.fetch("train", idx[i], augment=True)
        loss = task.loss_fn(m(x), y, 0)
        loss.backward()
        out.append((loss.detach(), torch.cat([p.grad.reshape(-1) for p in m.parameters()]), dict(m.named_buffers())))
    return out


def check_adapter(task, n=3, tol=1e-10):
    """[d] per worker, stacked batched and stacked vmap all equal plain autograd (and buffers)."""
    P = torch.stack([task.init_params(k) for k in range(n)])
    idx = Sampler(task.shards, task.batch_size, 0).all()[:n]
    ref = plain_grads(task, P, idx)
    modes = [("batched", True), ("vmap", False)] if task.use_batched else [("vmap", False)]
    for mode, flag in [("single", None), *modes]:
        for k, v in task.buffers.store.items():
            v.copy_(task.initial_buffers[k].expand_as(v))
        if flag is None:
            got = [task.loss_and_grad(P[i], idx[i], i) for i in range(n)]
        else:
            task.use_batched = flag
            L, G = task.loss_and_grad(P, idx, torch.arange(n))
            got = list(zip(L, G))
        for i, ((l0, g0, b0), (l1, g1)) in enumerate(zip(ref, got)):
            assert abs(l0.item() - l1.item()) < tol and (g0 - g1).abs().max().item() < tol, (mode, i)
            for k, v in b0.items():
                assert torch.allclose(v.double(), task.buffers.store[k][i].double(), atol=tol), (mode, k)
    task.use_batched = modes[0][0] == "batched"
    return ref


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    d = tmp_path_factory.mktemp("plugin")
    (d / "blobs_plugin.py").write_text(textwrap.dedent(PLUGIN))
    cfg = {"imports": ["blobs_plugin.py"], "n_workers": 4, "steps": 6, "eval_every": 3, "seed": 1,
           "task": {"name": "blobs", "dtype": "float64"}, "algorithm": ALGS["local_sgd"],
           "compute": {"model": "half_constant", "params": {"seconds": 0.5}}}
    (d / "blobs.yaml").write_text(yaml.safe_dump(cfg))
    return d


def test_user_module_through_imports_trains_the_same_on_simpy_and_stacked(plugin):
    (cfg,) = load(plugin / "blobs.yaml")  # registers the task and the compute model
    assert "blobs" in TASKS
    a = assert_same_runs(cfg, tol=1e-10)
    assert a[(a.worker == 0) & (a.step == 1)].compute_s.item() == 0.25  # the plugin's compute model
    ev = a[a.worker == -1]
    assert ev.test_loss.iloc[-1] < ev.test_loss.iloc[0]


def test_adapter_gradients_equal_plain_autograd_bn_buffers_included(plugin):
    load(plugin / "blobs.yaml")
    task = build_task({"name": "blobs", "dtype": "float64"}, 4, 0)
    assert task.use_batched and task.dim == sum(p.numel() for p in task.module.parameters())
    ref = check_adapter(task)
    assert (ref[0][2]["bn.running_mean"] != 0).any()  # the statistics moved: the buffer check is not vacuous


def test_who_selects_the_rows_of_per_worker_buffers(plugin):
    load(plugin / "blobs.yaml")
    task = build_task({"name": "blobs", "dtype": "float64"}, 4, 0)
    P = torch.stack([task.init_params(k) for k in range(2)])
    idx = Sampler(task.shards, 8, 0).all()[:2]
    rm = task.buffers.store["bn.running_mean"]
    L, G = task.loss_and_grad(P, idx, torch.tensor([3, 1]))
    assert (rm[[1, 3]] != 0).all() and (rm[[0, 2, 4]] == 0).all()  # rows 3 and 1 only
    for j, w in enumerate([3, 1]):
        before = rm[w].clone()
        lj, gj = task.loss_and_grad(P[j], idx[j], w)
        assert (gj - G[j]).abs().max() < 1e-12 and (rm[w] != before).any()
    task.loss_and_grad(P[0], idx[0])  # who=None: the spare row ("this process's worker")
    assert (rm[4] != 0).any()
    with pytest.raises(ValueError, match="who"):
        task.loss_and_grad(P, idx, torch.tensor([0]))


def test_stack_chunk_gives_the_same_gradients_and_buffers(plugin):
    load(plugin / "blobs.yaml")
    whole, chunked = (build_task({"name": "blobs", "dtype": "float64", "stack_chunk": c}, 3, 0) for c in (None, 2))
    P = torch.stack([whole.init_params(k) for k in range(3)])
    idx = Sampler(whole.shards, 8, 0).all()
    (la, ga), (lb, gb) = whole.loss_and_grad(P, idx), chunked.loss_and_grad(P, idx)
    assert (ga - gb).abs().max() < 1e-12 and (la - lb).abs().max() < 1e-12 and ga.shape == P.shape
    assert torch.allclose(whole.buffers.store["bn.running_var"], chunked.buffers.store["bn.running_var"])


def test_consensus_evaluation_ignores_worker_buffers_and_who_uses_them(plugin):
    load(plugin / "blobs.yaml")
    task = build_task({"name": "blobs", "dtype": "float64"}, 2, 0)
    p = task.init_params(0)
    before = task.evaluate(p)
    for _ in range(3):
        task.loss_and_grad(p, Sampler(task.shards, 8, 0).worker(0), 0)
    assert task.evaluate(p) == before  # precise BN: independent of the workers' statistics
    assert task.evaluate(p, who=0)["test_loss"] != before["test_loss"]


def test_parts_split_the_data_into_more_shards_than_workers(plugin):
    load(plugin / "blobs.yaml")
    task = build_task({"name": "blobs", "parts": 9}, 3, 0)
    assert len(task.shards) == 9 and sum(map(len, task.shards)) == 90
    with pytest.raises(ValueError, match="task.parts: 2 parts for 3 workers"):
        build_task({"name": "blobs", "parts": 2}, 3, 0)
    assert len(build_task({"name": "digits", "parts": 5}, 2, 0).shards) == 5


def test_registries_and_one_line_errors(plugin):
    with pytest.raises(TypeError, match="not a harness.tasks.Task"):
        register_task("nope")(dict)
    with pytest.raises(ConfigError, match="compute.model: .*unknown compute model 'nope'.*register_compute"):
        run_cfg({"name": "digits"}, compute={"model": "nope"})
    load(plugin / "blobs.yaml")
    if not torch.cuda.is_available():
        with pytest.raises(TaskDataError, match=r"^task.device: cuda requested but .* sees no GPU; use device: cpu"):
            build_task({"name": "blobs", "device": "cuda"}, 2, 0)
        assert build_task({"name": "blobs", "device": "auto"}, 2, 0).device == torch.device("cpu")
    with pytest.raises(TaskDataError, match="task.precision: bf16 keeps float32"):
        build_task({"name": "blobs", "dtype": "float64", "precision": "bf16"}, 2, 0)


def test_bf16_autocast_keeps_fp32_master_parameters(plugin):
    load(plugin / "blobs.yaml")
    t32, t16 = (build_task({"name": "blobs", "precision": pr}, 2, 0) for pr in ("fp32", "bf16"))
    p = t32.init_params(0)
    idx = Sampler(t32.shards, 8, 0).worker(0)
    (l32, g32), (l16, g16) = t32.loss_and_grad(p, idx, 0), t16.loss_and_grad(p, idx, 0)
    assert p.dtype == g16.dtype == torch.float32 and l16.dtype == torch.float32
    assert l16.item() != l32.item() and abs(l16.item() - l32.item()) < 0.05 * abs(l32.item())
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.98


def test_measured_compute_time_follows_the_model_size(tmp_path):
    path = write_text(tmp_path / "s.txt", stories=60)
    secs = {}
    for width in (8, 128):
        cfg = run_cfg({"name": "text", "path": str(path), "width": width, "context": 32, "batch_size": 16},
                      "stacked", "sync_sgd", steps=2, compute={"model": "measured", "sigma": 0.0, "scale": 2.0})
        df, _ = simulate(cfg)
        secs[width] = df[(df.worker == 0) & (df.step == 1)].compute_s.item()
        task = build_task(cfg.task, 4, 1)
        from harness.models.compute import _MEASURED

        assert secs[width] == pytest.approx(2.0 * _MEASURED[(task.timing_key, 16)])  # timed once, cached
    assert 0 < secs[8] < secs[128]


# -- the real backends: 4 processes, one launch per backend for a ResNet and a GPT case -------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return write_cifar10(d / "cifar", per_batch=16), write_text(d / "stories.txt", stories=80)


def small_resnet(root, **kw):
    return {"name": "cifar10", "root": str(root), "dtype": "float64", "depth": 8, "width": 4, "batch_size": 8,
            "eval_test": 32, "eval_train": 32, "bn_samples": 32, **kw}


def small_gpt(path, **kw):
    return {"name": "text", "path": str(path), "dtype": "float64", "width": 16, "heads": 2, "layers": 2,
            "context": 16, "batch_size": 4, "eval_test": 16, "eval_train": 16, **kw}


def launch_vs_simpy(cases, backend, tmp_path, ranks=4, env=None):
    """Launch ``cases`` on a real backend; per case (cfg, table, run.json, final workers) and the
    SimPy replay's (table, final workers), the replay on the CPU."""
    from results.store import read_run
    from tests.test_real_backends import launch

    config = tmp_path / "real.yaml"
    dumps = [c.model_dump(mode="json") for c in cases]
    for d in dumps:
        d.pop("backend")
    config.write_text(yaml.safe_dump({"cases": dumps}))
    proc = launch(backend, config, tmp_path / "runs", "--save-params", timeout=300, ranks=ranks, env=env)
    assert proc.returncode == 0, f"{backend} launch failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    for cfg in load(config, [f"backend={backend}"]):
        df, record = read_run(tmp_path / "runs" / cfg.run_id)
        workers = torch.load(tmp_path / "runs" / cfg.run_id / "final_params.pt")["workers"].cpu()
        assert record["status"] == "finished", record
        yield cfg, df, record, workers, *simulate(cfg.model_copy(
            update={"backend": "simpy", "task": {**cfg.task, "device": "cpu"}}))


@pytest.mark.mpi
@pytest.mark.parametrize("backend", ["mpi", "torch"])
def test_resnet_and_gpt_on_real_backends_equal_simpy(backend, data, tmp_path):
    root, text = data
    cases = [run_cfg(small_resnet(root), "simpy", "local_sgd"), run_cfg(small_gpt(text), "simpy", "diloco")]
    for cfg, df, record, workers, sdf, sfinal in launch_vs_simpy(cases, backend, tmp_path):
        assert (workers - sfinal).abs().max().item() < 1e-8, cfg.task["name"]
        ea, eb = (d[d.worker == -1].sort_values("step") for d in (df, sdf))
        for col in ["test_loss", "test_acc"] + (["test_ppl"] if cfg.task["name"] == "text" else []):
            assert abs(ea[col].to_numpy() - eb[col].to_numpy()).max() < 1e-8, col


# -- GPU (device machine only; skipped with the reason elsewhere) ----------------------------
def _need_gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU (torch.cuda.is_available() is False); GPU tests run on a GPU machine only")


@pytest.mark.gpu
def test_cuda_placement_and_gradients_match_cpu(data, monkeypatch):
    _need_gpu()
    monkeypatch.setenv("LOCAL_RANK", "0")
    root, text = data
    for spec in (small_resnet(root), small_gpt(text)):
        cpu, gpu = build_task(spec, 2, 0), build_task({**spec, "device": "cuda"}, 2, 0)
        assert gpu.device == torch.device("cuda", 0) and gpu.init_params(0).is_cuda
        P = torch.stack([cpu.init_params(k) for k in range(2)])
        idx = Sampler(cpu.shards, cpu.batch_size, 0).all()
        (lc, gc), (lg, gg) = cpu.loss_and_grad(P, idx), gpu.loss_and_grad(P.cuda(), idx)
        assert gg.is_cuda and (gg.cpu() - gc).abs().max().item() < 1e-8
        assert build_task({**spec, "device": "auto"}, 2, 0).device.type == "cuda"


@pytest.mark.gpu
def test_stacked_backend_on_gpu_equals_cpu(data):
    _need_gpu()
    root, text = data
    for spec, alg in ((small_resnet(root), "local_sgd"), (small_gpt(text), "sync_sgd")):
        (_, xc), (df, xg) = (simulate(run_cfg({**spec, "device": d}, "stacked", alg)) for d in ("cpu", "cuda"))
        assert xg.is_cuda and (xg.cpu() - xc).abs().max().item() < 1e-8
        assert df[df.worker == -1].test_loss.notna().all()


def _gpu_launch(data, tmp_path, ranks, env, device="cuda"):
    """A small ResNet (Local SGD) and GPT (DiLoCo) on ``task.device`` under torchrun; their run.json."""
    root, text = data
    cases = [run_cfg({**small_resnet(root), "device": device}, "simpy", "local_sgd", n_workers=ranks),
             run_cfg({**small_gpt(text), "device": device}, "simpy", "diloco", n_workers=ranks)]
    for cfg, _, record, workers, _, sfinal in launch_vs_simpy(cases, "torch", tmp_path, ranks, env):
        assert (workers - sfinal).abs().max().item() < 1e-8, cfg.task["name"]
        yield record


@pytest.mark.gpu
def test_torch_distributed_nccl_on_one_rank(data, tmp_path):
    _need_gpu()
    for record in _gpu_launch(data, tmp_path, 1, {}):
        assert "nccl" in record["transport"], record["transport"]


@pytest.mark.gpu
def test_gloo_with_cuda_tensors_on_two_ranks(data, tmp_path):
    _need_gpu()
    for record in _gpu_launch(data, tmp_path, 2, {"HARNESS_TORCH_BACKEND": "gloo"}):
        assert "gloo (data)" in record["transport"], record["transport"]
