"""A whole training step of a token classifier: the engine on the CPU and on CUDA, PyTorch as the peer.

    python benchmarks/bench_model_step.py                          # CPU rows, separate processes
    python benchmarks/bench_model_step.py --bidirectional          # the IMDB shape
    python benchmarks/bench_model_step.py --parts                  # where the engine's step goes
    python benchmarks/bench_model_step.py --threads 1 --clock cpu  # busy machine: CPU time
    python benchmarks/bench_model_step.py --out gpu_out --repeats 20   # + CUDA rows on a GPU

One step = zero_grad, forward (Embedding -> GRU -> last states -> Linear), softmax
cross-entropy, backward, global-norm clipping and AdamW: what ``gruengine train`` runs per
batch. ``engine-cuda`` is a ``SequenceModel(device='cuda')``: parameters, gradients and
optimizer state stay on the GPU and only the batch goes over and the outputs, loss and norm
come back (docs/cuda.md). The PyTorch model has the same layers and starts from the same
weights (the engine's state_dict under the same names, passed to every process through one
.npz file); every implementation reports its first step's loss and gradient norm, which are
checked against engine-cpu's.

Each implementation runs in fresh processes of its own (``--rounds`` of them, alternating
engine, torch, engine, ...; two libraries' thread pools in one process disturb each other,
and a user runs one or the other): warm-up steps first (JIT compilation excluded), then
``--repeats`` timed steps, and the median of all timed steps is reported. CUDA is
synchronised before each clock read (the engine's step ends with the norm on the host,
torch's with ``torch.cuda.synchronize``). ``--threads`` sizes every CPU pool.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from _separate import load_line, run_worker  # noqa: E402

SCRIPT = os.path.abspath(__file__)


def model_config(a, device):
    return dict(task="classify", num_outputs=2, input="tokens", vocab_size=a.vocab, embed_dim=a.embed,
                padding_idx=0, hidden_size=a.hidden, bidirectional=a.bidirectional, pooling="last",
                device=device, seed=0)


def flops_per_token(a):
    # the GRU dominates: forward ~6(I+H)H per direction, backward about twice (DESIGN.md)
    D = 2 if a.bidirectional else 1
    return 18 * (a.embed + a.hidden) * a.hidden * D


def make_batch(a):
    import numpy as np
    rng = np.random.default_rng(0)
    ids = rng.integers(1, a.vocab, size=(a.batch, a.steps)).astype(np.int64)
    return (ids, np.full(a.batch, a.steps, dtype=np.int64),
            rng.integers(0, 2, size=a.batch).astype(np.int64))


class Engine:
    def __init__(self, a, device, batch, state):
        import gruengine
        from gruengine.models import SequenceModel
        self.name = f"engine-{device}"
        self.model = SequenceModel(model_config(a, device))
        self.model.load_state_dict(state)
        self.opt = gruengine.AdamW(self.model.params, lr=1e-3)
        self.ids, self.lengths, self.y = batch
        self.clip = a.clip

    def step(self):
        m = self.model
        m.params.zero_grad()
        out = m.forward(self.ids, self.lengths)
        loss, dout = m.loss_and_grad(out, self.y, self.lengths)
        m.backward(dout)
        norm = self.opt.step(max_norm=self.clip)
        return loss, norm


class Torch:
    def __init__(self, a, torch, device, batch, state):
        nn = torch.nn
        self.torch, self.device, self.name = torch, device, f"torch-{device}"
        D = 2 if a.bidirectional else 1

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.embedding = nn.Embedding(a.vocab, a.embed, padding_idx=0)
                self.rnn = nn.GRU(a.embed, a.hidden, batch_first=True, bidirectional=a.bidirectional)
                self.head = nn.Linear(D * a.hidden, 2)

            def forward(self, ids):
                _, h_n = self.rnn(self.embedding(ids))            # full-length rows: no packing
                return self.head(torch.cat(list(h_n[-D:]), dim=1))

        self.net = Net().to(device)
        self.net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-3)
        ids, _, y = batch
        self.ids = torch.from_numpy(ids).to(device)
        self.y = torch.from_numpy(y).to(device)
        self.clip = a.clip

    def step(self):
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(self.net(self.ids), self.y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
        self.opt.step()
        if self.device == "cuda":
            torch.cuda.synchronize()
        return loss.item(), norm.item()


def cuda_usable():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False, "NUMBA_ENABLE_CUDASIM=1 (the simulator is not timed)"
    from gruengine.backend import cuda_available
    if not cuda_available():
        return False, "no usable CUDA GPU"
    from numba import cuda
    name = cuda.get_current_device().name
    return True, name.decode() if isinstance(name, bytes) else str(name)


def torch_available(device):
    try:
        import torch
    except ImportError:
        return False
    return device == "cpu" or torch.cuda.is_available()


# ---------------------------------------------------------------- one process, one implementation

def worker(a):
    import numpy as np
    state = dict(np.load(a.weights))
    batch = make_batch(a)
    kind, device = a.worker.split("-")
    if kind == "engine":
        impl = Engine(a, device, batch, state)
    else:
        import torch
        torch.set_num_threads(a.threads)
        torch.set_flush_denormal(True)             # torch's best on the CPU (docs/benchmarks.md)
        impl = Torch(a, torch, device, batch, state)
    first = impl.step()
    for _ in range(a.warmup):
        impl.step()
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    times = []
    for _ in range(a.repeats):
        t0 = clock()
        impl.step()
        times.append(clock() - t0)
    print(json.dumps({"times": times, "first": list(map(float, first))}))


def parts(a):
    # where the engine's CPU step goes: each part timed on its own, median of the repeats
    import numpy as np
    import gruengine
    from gruengine.models import SequenceModel
    m = SequenceModel(model_config(a, "cpu"))
    opt = gruengine.AdamW(m.params, lr=1e-3)
    ids, lengths, y = make_batch(a)
    emb, rnn, head = m.modules["embedding"], m.modules["rnn"], m.modules["head"]
    D, H = (2 if a.bidirectional else 1), a.hidden
    x = emb.forward(ids)
    yr, h_n = rnn.forward(x, lengths=lengths)
    feats = np.concatenate([h_n[-D + d] for d in range(D)], axis=1)
    out = head.forward(feats)
    _, dout = m.loss_and_grad(out, y, lengths)
    dfeats = head.backward(dout)
    dh_n = np.zeros_like(h_n)
    for d in range(D):
        dh_n[-D + d] = dfeats[:, d * H:(d + 1) * H]
    dx, _ = rnn.backward(None, dh_n)
    steps = {"zero_grad": m.params.zero_grad,
             "embedding forward (gather)": lambda: emb.forward(ids),
             "GRU forward": lambda: rnn.forward(x, lengths=lengths),
             "head + loss forward/backward": lambda: (head.forward(feats),
                                                      m.loss_and_grad(out, y, lengths),
                                                      head.backward(dout)),
             "GRU backward": lambda: rnn.backward(None, dh_n),
             "embedding backward (scatter)": lambda: emb.backward(dx),
             "clip + AdamW": lambda: opt.step(max_norm=a.clip),
             "whole step": Engine(a, "cpu", (ids, lengths, y), m.state_dict()).step}
    print(f"engine-cpu step parts, B={a.batch} T={a.steps} E={a.embed} H={a.hidden} "
          f"V={a.vocab} {'bi' if a.bidirectional else 'uni'}directional, "
          f"{gruengine.threads.describe()}")
    for name, fn in steps.items():
        fn()
        ts = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        print(f"  {name:30s} {1e3 * statistics.median(ts):8.2f} ms")


# ---------------------------------------------------------------- the driver

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=200, help="sequence length T")
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--vocab", type=int, default=20000)
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2, help="threads of every CPU pool")
    p.add_argument("--rounds", type=int, default=3, help="processes per implementation")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: the process's CPU time per step (with --threads 1: a ratio that "
                        "other processes on the machine barely change)")
    p.add_argument("--out", default=None, help="folder for model_step.json")
    p.add_argument("--parts", action="store_true",
                   help="time the parts of the engine's CPU step in this process, and exit")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(a)
        return 0
    if a.parts:
        parts(a)
        return 0

    import numpy as np
    import gruengine  # noqa: F401
    from gruengine.models import SequenceModel
    names = ["engine-cpu"]
    ok, why = cuda_usable()
    if ok:
        names.append("engine-cuda")
    else:
        print(f"engine-cuda: skipped ({why})")
    if torch_available("cpu"):
        names.append("torch-cpu")
        if torch_available("cuda"):
            names.append("torch-cuda")
        else:
            print("torch-cuda: skipped (torch sees no GPU)")
    else:
        print("torch: not importable, no peer rows")

    print(load_line() + " (start)")
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "weights.npz")
        np.savez(weights, **SequenceModel(model_config(a, "cpu")).state_dict())
        argv = [SCRIPT, "--weights", weights] + [
            str(v) for k in ("batch", "steps", "embed", "hidden", "vocab", "clip", "threads",
                             "repeats", "warmup", "clock") for v in (f"--{k}", getattr(a, k))]
        argv += ["--bidirectional"] if a.bidirectional else []
        res = {n: {"times": [], "first": None} for n in names}
        for _ in range(a.rounds):
            for n in names:
                r = run_worker(argv + ["--worker", n], a.threads)
                res[n]["times"] += r["times"]
                res[n]["first"] = res[n]["first"] or r["first"]
    print(load_line() + " (end)")

    # agreement: the first step from the same weights gives the same loss and gradient norm
    ref_loss, ref_norm = res["engine-cpu"]["first"]
    rows = []
    tokens = a.batch * a.steps
    for n in names:
        loss, norm = res[n]["first"]
        err = max(abs(loss - ref_loss) / abs(ref_loss), abs(norm - ref_norm) / abs(ref_norm))
        print(f"{n}: first-step loss {loss:.6f} norm {norm:.6f} (rel. diff to engine-cpu {err:.1e})")
        if err > 1e-3:
            print(f"{n}: DISAGREES with engine-cpu; not reported")
            continue
        ms = 1e3 * statistics.median(res[n]["times"])
        rows.append(dict(engine=n, ms_per_step=ms, tokens_per_s=tokens / (ms / 1e3),
                         gflops=flops_per_token(a) * tokens / (ms / 1e3) / 1e9,
                         first_step_rel_diff=err))
    base = {r["engine"]: r["ms_per_step"] for r in rows}
    print(f"\nB={a.batch} T={a.steps} E={a.embed} H={a.hidden} V={a.vocab} "
          f"{'bi' if a.bidirectional else 'uni'}directional, float32, {a.threads} threads, "
          f"median of {a.rounds} processes x {a.repeats} steps, separate processes, "
          f"{'CPU' if a.clock == 'cpu' else 'wall'} time")
    print(f"{'engine':<13}{'ms/step':>10}{'tokens/s':>12}{'GFLOP/s':>9}{'vs torch-cpu':>14}"
          f"{'vs torch-cuda':>15}")
    for r in rows:
        vs = [f"{base[t] / r['ms_per_step']:.2f}x" if t in base else "-"
              for t in ("torch-cpu", "torch-cuda")]
        print(f"{r['engine']:<13}{r['ms_per_step']:>10.1f}{r['tokens_per_s']:>12,.0f}"
              f"{r['gflops']:>9.1f}{vs[0]:>14}{vs[1]:>15}")
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        meta = dict(vars(a), machine=platform.processor() or platform.machine(),
                    gpu=why if ok else None)
        path = os.path.join(a.out, "model_step.json")
        with open(path + ".tmp", "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
        os.replace(path + ".tmp", path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
