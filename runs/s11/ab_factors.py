"""A/B in one process: FactoredRows.shared as a one-hot matmul (now) vs the per-table gathers (before)."""
import copy, statistics, sys, tempfile, time, types, torch
sys.path.insert(0, ".")
from panglot.config import load_config
from panglot.nn import autocast_context
from panglot.nn.factored_rows import FactoredRows
from panglot.training.optim import build_optimizer
from recipes.train_unified import UnifiedRecipe, build
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
with tempfile.TemporaryDirectory() as out:
    cfg = load_config(UnifiedRecipe, "configs/unified_quickstart.yaml", [f"out_dir={out}", "codec_dir=runs/quickstart/stages/pixel_vq"])
    model, loader = build(cfg)
model.train()
before = copy.deepcopy(model)
def gathers(self):
    vals = [self.membership[:, :0]]  # unused
    out, col = 0, 0
    for t in self.tables:
        v = self.membership[:, col:col + t.shape[0]].argmax(1); col += t.shape[0]
        out = out + t[v]
    return out
for m in before.modules():
    if isinstance(m, FactoredRows):
        idx = []; col = 0
        for t in m.tables:
            idx.append(m.membership[:, col:col + t.shape[0]].argmax(1)); col += t.shape[0]
        m._idx = idx
        m.shared = types.MethodType(lambda self: sum(t[i] for t, i in zip(self.tables, self._idx)), m)
model.backbone.compile_layers(); before.backbone.compile_layers()
arms = {"one-hot matmul": (model, build_optimizer(model, cfg.train.optim)), "gathers": (before, build_optimizer(before, cfg.train.optim))}
batches = [next(loader) for _ in range(6)]
def run(m, opt):
    losses = []
    for b in batches:
        with autocast_context(m.device, "bf16"):
            loss = m.loss(b)[0]
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True); losses.append(loss.item())
    return losses
for n, (m, o) in arms.items():
    print(n, "warm-up losses", [round(x, 4) for x in run(m, o)], flush=True)
times = {n: [] for n in arms}
for r in range(6):
    for n, (m, o) in (list(arms.items())[r % 2:] + list(arms.items())[:r % 2]):
        t = time.perf_counter(); run(m, o); times[n].append((time.perf_counter() - t) / len(batches))
for n, ts in times.items(): print(n, f"{statistics.median(ts):.3f} s/step", [round(x, 3) for x in ts])
print("paired ratio (gathers / one-hot) median", round(statistics.median(b / a for a, b in zip(times["one-hot matmul"], times["gathers"])), 3))
