"""One rank of the distributed tests: run under ``mpiexec -n 2 python tests/mpi_ranks.py ...``.

    train SPEC.json     train the runs SPEC lists ({"cases": [{"out", "config", "stop_at",
                        "resume", "clock_skew"}], "report": path}); after every epoch each rank
                        saves its weights and optimizer state to <out>.ranks/rank<r>.npz;
                        "stop_at": k sends SIGTERM to rank 1 itself after step k (a real
                        signal, one rank); "clock_skew": s sets rank 1's run clock s seconds
                        behind; the report has every rank's final step of each case
    fail ARGS...        ``gruengine ARGS`` in which rank 1 raises RuntimeError at step 3
    nan ARGS...         ``gruengine ARGS`` in which rank 1's loss is NaN at step 3 (only there)
    infer OUT ARGS [:: ARGS]...   each ``gruengine ARGS`` in turn, in-process; rank 0's
                        standard output of the i-th goes to OUT.i
"""
import contextlib
import json
import os
import signal
import sys

# the repository instead of tests/ (whose cuda/ folder would shadow the package 'cuda')
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import gruengine  # noqa: E402,F401  (first: the thread settings of a rank)
import numpy as np  # noqa: E402

from gruengine.distributed import world  # noqa: E402


def _dump_state(trainer, record):
    w = trainer.world
    folder = trainer.out_dir + ".ranks"
    os.makedirs(folder, exist_ok=True)
    opt = trainer.opt.state_dict()["arrays"]
    np.savez(os.path.join(folder, f"rank{w.rank}.npz"), **trainer.model.state_dict(),
             **{f"optim.{k}": v for k, v in opt.items()})


def _sigterm_rank1_after(k):
    def hook(trainer, info):
        if trainer.world.rank == 1 and info["step"] == k:
            os.kill(os.getpid(), signal.SIGTERM)
    return hook


def train(spec_path):
    from gruengine.train import Trainer
    import numba
    w = world()
    spec = json.load(open(spec_path))
    stopped, steps = {}, {}
    for case in spec["cases"]:
        hooks = {"epoch": _dump_state}
        if case.get("stop_at"):
            hooks["step"] = _sigterm_rank1_after(case["stop_at"])
        try:
            if case.get("resume"):
                t = Trainer.resume(case["out"], world=w, quiet=True, hooks=hooks)
            else:
                t = Trainer(case["config"], case["out"], world=w, quiet=True, hooks=hooks)
            if case.get("clock_skew") and w.rank == 1:
                t._elapsed0 = -case["clock_skew"]        # this rank's clock lags rank 0's
            t.fit()
            stopped[case["out"]] = None
        except KeyboardInterrupt as e:
            stopped[case["out"]] = [int(getattr(e, "signum", 0)), t.step]
        steps[case["out"]] = w.gather(t.step)
    threads = w.gather({"numba": numba.get_num_threads(), "world": w.threads,
                        "openblas": os.environ.get("OPENBLAS_NUM_THREADS"),
                        "allowed": len(os.sched_getaffinity(0)), "ranks_here": w.ranks_here})
    if w.rank == 0:
        with open(spec["report"], "w") as f:
            json.dump({"size": w.size, "threads": threads, "resyncs": w.resyncs,
                       "stopped": stopped, "steps": steps}, f)


def fail(args):
    from gruengine.train import Trainer
    from gruengine_cli.main import main
    gradient = Trainer._gradient

    def raising(self, idx):
        if self.world.rank == 1 and self.step == 3:
            raise RuntimeError("injected failure at step 3")
        return gradient(self, idx)
    Trainer._gradient = raising
    main(args)


def nan(args):
    from gruengine.train import Trainer
    from gruengine_cli.main import main
    forward_backward = Trainer._forward_backward

    def poisoned(self, x, L, y):
        if self.world.rank == 1 and self.step == 2:
            self.hooks["loss"] = lambda trainer, loss: float("nan")
        return forward_backward(self, x, L, y)
    Trainer._forward_backward = poisoned
    main(args)


def infer(out, args):
    from gruengine_cli.main import main
    w = world()
    commands, cmd = [], []
    for a in args + ["::"]:
        if a == "::":
            commands.append(cmd)
            cmd = []
        else:
            cmd.append(a)
    for i, cmd in enumerate(commands):
        with open(f"{out}.{i}" if w.rank == 0 else os.devnull, "w") as sink, \
                contextlib.redirect_stdout(sink):
            try:
                main(cmd)
            except SystemExit as e:
                if e.code:
                    raise


if __name__ == "__main__":
    what, rest = sys.argv[1], sys.argv[2:]
    if what == "train":
        train(rest[0])
    elif what == "fail":
        fail(rest)
    elif what == "nan":
        nan(rest)
    elif what == "infer":
        infer(rest[0], rest[1:])
    else:
        raise SystemExit(f"unknown scenario {what!r}")
