"""Speed of the denoising networks on the CPU (or a GPU), against baselines run side by side.

Figures, all measured in the same run:

* training throughput (crops/s, forward + backward + Adam step) of DWAN,
  U-Net and DilatedNet at the training crop size;
* inference of one subject (``--shape``, slice-wise with
  :func:`asl_pipeline.models.inference.denoise_volume`) in seconds, and its
  ratio to a 3 mm Gaussian smoothing of the same map (the cheapest
  denoiser).

Usage::

    python benchmarks/bench_dwan.py --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=48)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 64, 20))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import torch
    from scipy import ndimage

    from asl_pipeline.models import build_model
    from asl_pipeline.models.inference import denoise_volume
    from asl_pipeline.smoothing import fwhm_to_sigma
    from asl_pipeline.training import masked_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, p = args.batch_size, args.patch_size
    x = torch.from_numpy(rng.normal(50, 30, (n, 1, p, p)).astype(np.float32)).to(args.device)
    y = torch.from_numpy(rng.normal(50, 30, (n, 1, p, p)).astype(np.float32)).to(args.device)
    m = torch.ones_like(x)
    vol = rng.normal(50, 30, args.shape).astype(np.float32)
    mask = np.zeros(args.shape, bool)
    sx, sy = args.shape[0] // 8, args.shape[1] // 8
    mask[sx:-sx, sy:-sy, 1:-1] = True
    sigma = fwhm_to_sigma(3.0, (3.4, 3.4, 6.0))
    t_gauss = _best(lambda: ndimage.gaussian_filter(vol, sigma), args.repeats)
    print(
        f"device {args.device}, {args.threads} thread(s); crops {n} x {p}x{p}; "
        f"subject {tuple(args.shape)}"
    )
    print(f"{'model':<12}{'params':>10}{'train crops/s':>15}{'subject s':>11}{'x Gaussian':>12}")
    for arch in ("dwan", "unet", "dilatednet"):
        model = build_model(arch).to(args.device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(model=model, opt=opt):
            opt.zero_grad()
            masked_loss(model(x), y, m).backward()
            opt.step()

        step()  # warm-up
        t_step = _best(step, args.repeats)
        model.eval()
        denoise_volume(model, vol, mask, device=args.device)
        t_inf = _best(
            lambda model=model: denoise_volume(model, vol, mask, device=args.device), args.repeats
        )
        n_par = sum(q.numel() for q in model.parameters())
        print(f"{arch:<12}{n_par:>10,}{n / t_step:>15.1f}{t_inf:>11.3f}{t_inf / t_gauss:>12.0f}")
    print(f"{'gaussian3mm':<12}{0:>10}{'-':>15}{t_gauss:>11.4f}{1:>12}")


if __name__ == "__main__":
    main()
