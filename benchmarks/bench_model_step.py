"""A whole training step of a token classifier: the engine on the CPU and on CUDA, PyTorch as the peer.

    NUMBA_NUM_THREADS=2 python benchmarks/bench_model_step.py                  # CPU rows here
    python benchmarks/bench_model_step.py --out gpu_out --repeats 20           # + CUDA rows on a GPU

One step = zero_grad, forward (Embedding -> GRU -> last states -> Linear), softmax
cross-entropy, backward, global-norm clipping and AdamW: what ``gruengine train`` runs per
batch. ``engine-cuda`` is a ``SequenceModel(device='cuda')``: parameters, gradients and
optimizer state stay on the GPU and only the batch goes over and the outputs, loss and norm
come back (docs/cuda.md). The PyTorch model has the same layers and starts from the same
weights (the engine's state_dict under the same names); before timing, the first step's loss
and gradient norm of every engine are checked against engine-cpu. Warm-up steps first (JIT
compilation excluded), then the median of ``--repeats`` timed steps; CUDA is synchronised
before each clock read (the engine's step ends with the norm on the host, torch's with
``torch.cuda.synchronize``).
"""
import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gruengine  # noqa: E402,F401  (before NumPy, as `gruengine train` imports it: OpenBLAS settings)
import numpy as np  # noqa: E402


def model_config(a, device):
    return dict(task="classify", num_outputs=2, input="tokens", vocab_size=a.vocab, embed_dim=a.embed,
                padding_idx=0, hidden_size=a.hidden, bidirectional=a.bidirectional, pooling="last",
                device=device, seed=0)


def flops_per_token(a):
    # the GRU dominates: forward ~6(I+H)H per direction, backward about twice (DESIGN.md)
    D = 2 if a.bidirectional else 1
    return 18 * (a.embed + a.hidden) * a.hidden * D


class Engine:
    def __init__(self, a, device, batch):
        from gruengine.models import SequenceModel
        self.name = f"engine-{device}"
        self.model = SequenceModel(model_config(a, device))
        self.opt = gruengine.AdamW(self.model.params, lr=1e-3)
        self.ids, self.lengths, self.y = batch
        self.clip = a.clip

    def state_dict(self):
        return self.model.state_dict()

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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=200, help="sequence length T")
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--vocab", type=int, default=20000)
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=None, help="folder for model_step.json")
    a = p.parse_args(argv)

    rng = np.random.default_rng(0)
    ids = rng.integers(1, a.vocab, size=(a.batch, a.steps)).astype(np.int64)
    batch = (ids, np.full(a.batch, a.steps, dtype=np.int64),
             rng.integers(0, 2, size=a.batch).astype(np.int64))
    engines = [Engine(a, "cpu", batch)]
    state = engines[0].state_dict()
    ok, why = cuda_usable()
    if ok:
        engines.append(Engine(a, "cuda", batch))
        engines[-1].model.load_state_dict(state)
    else:
        print(f"engine-cuda: skipped ({why})")
    try:
        import torch
        torch.set_flush_denormal(True)             # torch's best on the CPU (docs/benchmarks.md)
        engines.append(Torch(a, torch, "cpu", batch, state))
        if torch.cuda.is_available():
            engines.append(Torch(a, torch, "cuda", batch, state))
        else:
            print("torch-cuda: skipped (torch sees no GPU)")
    except ImportError:
        print("torch: not importable, no peer rows")

    # agreement: the first step from the same weights gives the same loss and gradient norm
    first = {e.name: e.step() for e in engines}
    ref_loss, ref_norm = first["engine-cpu"]
    agree = {}
    for name, (loss, norm) in first.items():
        err = max(abs(loss - ref_loss) / abs(ref_loss), abs(norm - ref_norm) / abs(ref_norm))
        agree[name] = err
        print(f"{name}: first-step loss {loss:.6f} norm {norm:.6f} (rel. diff to engine-cpu {err:.1e})")
        if err > 1e-3:
            print(f"{name}: DISAGREES with engine-cpu; not timed")
    engines = [e for e in engines if agree[e.name] <= 1e-3]

    tokens = a.batch * a.steps
    rows = []
    for e in engines:
        for _ in range(a.warmup):
            e.step()
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            e.step()
            times.append(time.perf_counter() - t0)
        ms = 1e3 * float(np.median(times))
        rows.append(dict(engine=e.name, ms_per_step=ms, tokens_per_s=tokens / (ms / 1e3),
                         gflops=flops_per_token(a) * tokens / (ms / 1e3) / 1e9,
                         first_step_rel_diff=agree[e.name]))
    base = {r["engine"]: r["ms_per_step"] for r in rows}
    print(f"\nB={a.batch} T={a.steps} E={a.embed} H={a.hidden} V={a.vocab} "
          f"{'bi' if a.bidirectional else 'uni'}directional, float32, median of {a.repeats}")
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
                    threads=os.environ.get("NUMBA_NUM_THREADS"), gpu=why if ok else None)
        path = os.path.join(a.out, "model_step.json")
        with open(path + ".tmp", "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
        os.replace(path + ".tmp", path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
