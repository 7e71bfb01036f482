#!/usr/bin/env python3
"""Train one deformable-attention layer (msda.nn.MultiScaleDeformableAttention) on the CPU.

Synthetic task (teacher / student): a fixed, randomly initialised "teacher" layer maps random
multi-scale feature maps and queries to outputs; a freshly initialised "student" layer of the
same architecture learns to reproduce them. Every step draws new inputs, so the student has to
learn where to sample (sampling_offsets), how to weigh the samples (attention_weights) and the
projections, through msda's backward for value, locations and weights.

    pip install .            # from the repository root (builds msda)
    python examples/train_one_layer.py [--steps 300] [--plot examples/train_one_layer_loss.png]

Shows a tqdm progress bar if tqdm is installed, writes the loss curve with matplotlib (if
installed) and exits with status 1 if the loss did not fall.
"""
import argparse
import math
import os
import sys
import time

import torch

import msda.nn

LEVELS = ((16, 16), (8, 8))


def progress(iterable, total):
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        # Redraw at most every 0.2 s on a terminal, every 5 s into a log file.
        interval = 0.2 if sys.stderr.isatty() else 5.0
        return tqdm(iterable, total=total, desc="train", unit="step", mininterval=interval)

    class _Plain:  # Fallback: a line every 10 %.
        def __init__(self):
            self.every = max(1, total // 10)

        def __iter__(self):
            for i, item in enumerate(iterable):
                yield item
                if (i + 1) % self.every == 0 or i + 1 == total:
                    print(f"step {i + 1}/{total} {self.postfix}", flush=True)

        postfix = ""

        def set_postfix_str(self, text, refresh=True):
            self.postfix = text

        def close(self):
            pass

    return _Plain()


def make_layer(args, seed, teacher=False):
    torch.manual_seed(seed)
    layer = msda.nn.MultiScaleDeformableAttention(
        embed_dims=args.embed_dims, num_heads=args.heads, num_levels=len(LEVELS),
        num_points=args.points, dropout=0.0, batch_first=True,
    )
    if teacher:
        with torch.no_grad():
            # Query-dependent offsets (a few pixels) and sharp attention weights.
            layer.sampling_offsets.weight.normal_(0.0, 1.0 / math.sqrt(args.embed_dims))
            layer.attention_weights.weight.normal_(0.0, 2.0 / math.sqrt(args.embed_dims))
        layer.requires_grad_(False)
    return layer


def batch(args, generator):
    b, e = args.batch, args.embed_dims
    keys = sum(h * w for h, w in LEVELS)
    value = torch.randn(b, keys, e, generator=generator)
    # Smooth the maps a little so that sampling positions matter at sub-pixel scale.
    start = 0
    for h, w in LEVELS:
        m = value[:, start:start + h * w].transpose(1, 2).reshape(b, e, h, w)
        m = torch.nn.functional.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=False)
        value[:, start:start + h * w] = m.reshape(b, e, h * w).transpose(1, 2)
        start += h * w
    query = torch.randn(b, args.queries, e, generator=generator)
    ref = torch.rand(b, args.queries, len(LEVELS), 2, generator=generator) * 0.8 + 0.1
    return query, value, ref


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--embed-dims", type=int, default=32)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--points", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch (and so msda) threads; the layer is tiny, so one thread is "
                        "fastest: syncing threads costs more than the work (0: torch's default)")
    p.add_argument("--plot", default=os.path.join("examples", "train_one_layer_loss.png"),
                   help="loss-curve PNG path ('' to skip)")
    p.add_argument("--min-drop", type=float, default=0.25,
                   help="fail unless final loss <= min_drop * initial loss")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    teacher = make_layer(args, seed=1000 + args.seed, teacher=True).eval()
    student = make_layer(args, seed=args.seed)
    opt = torch.optim.Adam(student.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    gen = torch.Generator().manual_seed(args.seed)
    spatial_shapes = torch.tensor(LEVELS)

    losses = []
    t0 = time.perf_counter()
    bar = progress(range(args.steps), args.steps)
    for _ in bar:
        query, value, ref = batch(args, gen)
        with torch.no_grad():
            # The residual (identity = query) is the same for both: compare what they add.
            target = teacher(query, value=value, reference_points=ref,
                             spatial_shapes=spatial_shapes) - query
        out = student(query, value=value, reference_points=ref, spatial_shapes=spatial_shapes) - query
        loss = torch.nn.functional.mse_loss(out, target) / target.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix_str(f"loss {losses[-1]:.4f}", refresh=False)
    bar.close()
    elapsed = time.perf_counter() - t0

    window = max(1, min(20, args.steps // 5))
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window
    print(f"{args.steps} steps in {elapsed:.1f} s ({torch.get_num_threads()} threads): "
          f"relative MSE {first:.4f} -> {last:.4f} (mean of first / last {window} steps)")

    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot written")
        else:
            fig, ax = plt.subplots(figsize=(6, 3.5))
            ax.plot(losses, lw=0.8, label="per step")
            smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                      for i in range(len(losses))]
            ax.plot(smooth, lw=2, label=f"mean of {window}")
            ax.set_yscale("log")
            ax.set_xlabel("step")
            ax.set_ylabel("relative MSE to teacher")
            ax.set_title("msda.nn.MultiScaleDeformableAttention: student vs teacher")
            ax.legend()
            fig.tight_layout()
            os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
            fig.savefig(args.plot, dpi=120)
            print(f"loss curve: {args.plot}")

    if not last <= args.min_drop * first:
        print(f"FAILED: the loss did not fall enough ({last:.4f} > {args.min_drop} * {first:.4f})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
