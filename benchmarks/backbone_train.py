"""Training-step throughput: panglot's backbone vs transformers' LlamaForCausalLM, same config and weights.

One process, one batch, interleaved A/B rounds (every setting runs one step per round, in rotating
order) so that load from other processes on a shared machine hits all settings alike. A step is
forward + cross-entropy + backward + AdamW step. Reports median wall time and CPU time per step
(medians over rounds); tokens/s counts input tokens (batch x seq) per wall second.

    .venv/bin/python benchmarks/backbone_train.py    # small size, batch 8 x 256 tokens, 8192 vocab

All settings use the same fused AdamW, so the optimizer costs the same in every row.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from panglot.backbone import build_transformer, export_hf_state_dict, hf_config_from
from panglot.nn import autocast_context, default_device


@dataclass
class Setting:
    name: str
    logits_fn: Callable[[torch.Tensor], torch.Tensor]
    params: list[torch.nn.Parameter]
    dtype: str

    def __post_init__(self) -> None:
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4, fused=True)
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.losses: list[float] = []


def train_step(setting: Setting, tokens: torch.Tensor, device: torch.device) -> float:
    setting.optimizer.zero_grad(set_to_none=True)
    with autocast_context(device, setting.dtype):
        logits = setting.logits_fn(tokens[:, :-1])  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
    loss.backward()
    setting.optimizer.step()
    return loss.item()


def build_settings(args: argparse.Namespace, device: torch.device) -> list[Setting]:
    torch.manual_seed(0)
    ours = build_transformer(args.size, args.vocab, max_seq_len=args.seq).to(device)
    hf_state = export_hf_state_dict(ours, "llama")
    settings = []
    for dtype in ("fp32", "bf16"):
        model = build_transformer(args.size, args.vocab, max_seq_len=args.seq).to(device)
        model.load_state_dict(ours.state_dict())
        settings.append(Setting(f"panglot {dtype}", model, list(model.parameters()), dtype))
        for attn in ("sdpa", "eager"):
            hf_config = LlamaConfig(**hf_config_from(ours.cfg, "llama"), attn_implementation=attn)
            hf = LlamaForCausalLM(hf_config).to(device)
            hf.load_state_dict(hf_state, strict=True)
            hf.config.use_cache = False
            settings.append(
                Setting(f"HF Llama {attn} {dtype}", lambda x, m=hf: m(x).logits, list(hf.parameters()), dtype)
            )
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="small")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq", type=int, default=256, help="tokens per row (inputs; targets shift by one)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per setting")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default, one per core)"
    )
    parser.add_argument("--rounds", type=int, default=4, help="timed interleaved rounds")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    settings = build_settings(args, device)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or device}")
    print(f"size={args.size} vocab={args.vocab} batch={args.batch} seq={args.seq}\n")

    for setting in settings:  # warm-up (and compilation) outside the timed rounds
        for _ in range(args.warmup):
            train_step(setting, tokens, device)
    for round_index in range(args.rounds):
        shift = round_index % len(settings)
        for setting in settings[shift:] + settings[:shift]:
            wall, cpu = time.perf_counter(), time.process_time()
            setting.losses.append(train_step(setting, tokens, device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            setting.wall.append(time.perf_counter() - wall)
            setting.cpu.append(time.process_time() - cpu)

    n_tokens = args.batch * args.seq
    baseline = next(s for s in settings if s.name == "HF Llama eager fp32")
    base_wall, base_cpu = statistics.median(baseline.wall), statistics.median(baseline.cpu)
    print("| setting | wall s/step | CPU s/step | tokens/s | vs HF eager fp32 (wall / CPU) | last loss |")
    print("|---|---:|---:|---:|---:|---:|")
    for s in settings:
        wall, cpu = statistics.median(s.wall), statistics.median(s.cpu)
        print(
            f"| {s.name} | {wall:.3f} | {cpu:.3f} | {n_tokens / wall:,.0f} "
            f"| {base_wall / wall:.2f}x / {base_cpu / cpu:.2f}x | {s.losses[-1]:.4f} |"
        )


if __name__ == "__main__":
    main()
