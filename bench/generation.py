#!/usr/bin/env python
"""Generation speed: diffda_nb's engine against diffusers' img2img pipeline on the Stable Diffusion 1.5 architecture.

Settings (SD 1.5 architecture with random weights -- speed does not depend on the weights -- 512 px, DPM-Solver++ 25 steps,
strength 0.7, CFG 7.5, 256 jobs from 256 different synthetic source images):
  a  diffusers `StableDiffusionImg2ImgPipeline`, one image per call (a subset is timed)
  b  diffusers at batch 32
  c  the strongest diffusers set-up: bf16, batch 64, channels-last, fused QKV, torch.compile of UNet and VAE (default mode)
  d  diffda_nb.generate with the same model optimisations plus its own (cuDNN benchmark, SDPA flash backend, no host syncs
     in the denoising loop, decode + PNG writes overlapped with the next batch); it also writes the PNGs and the manifest
  e  the engine on DA-Fusion's mixed strengths {0.25, 0.5, 0.75, 1.0}, compared with (d) per denoising step
It also checks that (d)'s bf16 images agree with diffusers' within bf16 noise, and that the engine in fp32 equals diffusers.

Writes a JSON to bench/results/<device>-<date>.json (or --out) and prints a table. Nothing runs on import.
`python bench/generation.py --smoke --out /tmp/x.json` runs every setting end to end on CPU with the tiny pipeline (64 px, 8 jobs).
See bench/README.md for running it on a GPU machine.
"""
import argparse, datetime, json, math, os, platform, re, shutil, sys, tempfile, time
from pathlib import Path

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=('CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'),
                 up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'),
                 cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn='silu',
                 flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1, center_input_sample=False)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                down_block_types=('DownEncoderBlock2D',) * 4, up_block_types=('UpDecoderBlock2D',) * 4, norm_num_groups=32,
                act_fn='silu', sample_size=512, scaling_factor=0.18215)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, hidden_act='quick_gelu', projection_dim=768, layer_norm_eps=1e-5,
                 bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear',
                      steps_offset=1, algorithm_type='dpmsolver++', solver_order=2, prediction_type='epsilon')
CLASSES = ['cat', 'dog', 'bird', 'car', 'ship', 'airplane', 'horse', 'frog']
NAMES = {'a': 'a_diffusers_single', 'b': 'b_diffusers_batch', 'c': 'c_diffusers_best', 'd': 'd_engine', 'e': 'e_engine_dafusion'}
LABELS = {'a': 'diffusers, one image per call', 'b': 'diffusers, batch {b}', 'c': 'diffusers best ({dt}, batch {c}, CL, QKV{comp})',
          'd': 'engine (batch {d}, + flash, cudnn bench, overlap)', 'e': 'engine, DA-Fusion mixed strengths'}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--smoke', action='store_true', help='tiny pipeline, 64 px, 8 jobs, CPU-friendly: checks the script end to end')
    p.add_argument('--out', type=Path, default=None, help='JSON file (default bench/results/<device>-<date>.json); merged into if it exists')
    p.add_argument('--only', default='abcde', help="settings to run, e.g. 'ab' or 'cde' (split a run that exceeds a time limit)")
    p.add_argument('--jobs', type=int, default=None, help='number of jobs (default 256; smoke 8)')
    p.add_argument('--size', type=int, default=None, help='image size (default 512; smoke 64)')
    p.add_argument('--steps', type=int, default=25)
    p.add_argument('--strength', type=float, default=0.7)
    p.add_argument('--guidance', type=float, default=7.5)
    p.add_argument('--single', type=int, default=None, help='images timed in setting (a) (default 32; smoke 4)')
    p.add_argument('--batch-b', type=int, default=None, help='batch of setting (b) (default 32; smoke 4)')
    p.add_argument('--batch', type=int, default=None, help='batch of settings (c), (d), (e) (default 64; smoke 8)')
    p.add_argument('--dtype', default=None, help='bf16 (default on GPU), fp16 or fp32 (default on CPU)')
    p.add_argument('--no-compile', action='store_true', help='skip torch.compile in (c)-(e) (always skipped with --smoke)')
    p.add_argument('--agree', type=int, default=None, help='jobs for the output-agreement check (default 4; smoke 2)')
    p.add_argument('--device', default=None, help="device (default: the best available; 'cpu' forces CPU)")
    a = p.parse_args(argv)
    d = dict(jobs=(8, 256), size=(64, 512), single=(4, 32), batch_b=(4, 32), batch=(8, 64), agree=(2, 4))
    for k, (smoke, full) in d.items():
        if getattr(a, k) is None: setattr(a, k, smoke if a.smoke else full)
    if set(a.only) - set('abcde'): p.error(f"--only: letters from 'abcde', got {a.only!r}")
    return a


def build_sd15(device, dtype, seed=0):
    "SD 1.5 architecture with random weights (deterministic from `seed`), built directly on `device`."
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from diffda_nb.models import clip_tokenizer
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
    for m in (unet, vae, text_encoder): m.to(dtype=dtype).eval().requires_grad_(False)
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
                                          scheduler=DPMSolverMultistepScheduler(**SD15_SCHEDULER), safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_pipe(args, device, dtype):
    import torch
    if args.smoke:
        from diffda_nb.models import tiny_random_sd
        pipe = tiny_random_sd(sample_size=args.size)
        for m in (pipe.unet, pipe.vae, pipe.text_encoder): m.to(device=device, dtype=dtype)
        return pipe
    return build_sd15(device, dtype)


def synthetic_sources(n, size, seed=0):
    "n different smooth colour images with fine noise (RGB PIL, size×size)."
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
        a = np.asarray(base, np.float32) + rng.normal(0, 8, (size, size, 3)).astype(np.float32)
        out.append(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)))
    return out


def make_jobs(n, strengths, args, prefix):
    from diffda_nb.jobs import Job
    return [Job(f'{prefix}{i:05d}', source_index=i, prompt=f'a photo of a {CLASSES[i % len(CLASSES)]}', strength=float(strengths[i]),
                num_inference_steps=args.steps, guidance_scale=args.guidance, seed=i, source_class=i % len(CLASSES),
                target_class=i % len(CLASSES), method='bench') for i in range(n)]


def steps_run(job):
    "Denoising steps img2img runs for a job (as the diffusers pipeline computes them)."
    return min(int(job.num_inference_steps * job.strength), job.num_inference_steps)


def sync(device):
    import torch
    if device.type == 'cuda': torch.cuda.synchronize(device)


def diffusers_call(pipe, sources, jobs, output_type='pil', per_job_generators=False):
    "One diffusers img2img call for a batch of same-strength jobs."
    import torch
    gen = [torch.Generator().manual_seed(j.seed) for j in jobs] if per_job_generators else torch.Generator().manual_seed(jobs[0].seed)
    return pipe([j.prompt for j in jobs], image=[sources[j.source_index] for j in jobs], strength=jobs[0].strength,
                num_inference_steps=jobs[0].num_inference_steps, guidance_scale=jobs[0].guidance_scale, generator=gen,
                output_type=output_type).images


def time_diffusers(pipe, sources, jobs, batch, device, warmup=1):
    "img/s of diffusers over `jobs` in calls of `batch` (after `warmup` untimed calls)."
    for _ in range(warmup): diffusers_call(pipe, sources, jobs[:batch])
    sync(device); t0 = time.perf_counter()
    for s in range(0, len(jobs), batch): diffusers_call(pipe, sources, jobs[s:s + batch])
    sync(device)
    return len(jobs) / (time.perf_counter() - t0)


def time_engine(pipe, sources, jobs, warm_jobs, batch, root, device, engine_kw):
    "img/s of diffda_nb.generate over `jobs` (end to end: PNGs and manifest written), after an untimed run of `warm_jobs`."
    from diffda_nb.generate import generate
    generate(pipe, warm_jobs, root / 'warm', sources, batch_size=batch, progress=False, **engine_kw)
    sync(device); t0 = time.perf_counter()
    m = generate(pipe, jobs, root / 'run', sources, batch_size=batch, progress=False, **engine_kw)
    sync(device); secs = time.perf_counter() - t0
    if len(m) != len(jobs) or m.missing_files(): raise RuntimeError(f'engine run incomplete: {len(m)} rows for {len(jobs)} jobs')
    info = json.loads((root / 'run' / 'generation.json').read_text())
    shutil.rmtree(root, ignore_errors=True)
    return len(jobs) / secs, secs, info


def optimise(pipe, compile_models):
    "The model-level speed-ups shared by (c), (d) and (e): channels-last, fused QKV, torch.compile of UNet and VAE."
    import torch
    from diffda_nb.models import speed_up
    speed_up(pipe, channels_last=True, fuse_qkv=True, sdpa=True, compile=False)
    if compile_models:
        pipe.unet.compile()
        pipe.vae.encoder.compile()
        pipe.vae.decoder.compile()


def agreement_refs(pipe, sources, jobs):
    "diffusers' own single-job outputs (float arrays) for the agreement check."
    import numpy as np
    return np.stack([diffusers_call(pipe, sources, [j], output_type='np', per_job_generators=True)[0] for j in jobs])


def device_slug(name):
    return re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-').lower() or 'device'


def run(args):
    import numpy as np
    import torch
    import diffusers
    from diffda_nb.core import pick_device, pick_dtype
    diffusers.utils.logging.set_verbosity_error()   # no "modules kept in float32" / config chatter in the report
    from diffda_nb.engine import generate_arrays
    device = pick_device('cpu' if args.smoke and args.device is None else args.device)
    dtype = pick_dtype(device, args.dtype)
    compile_models = device.type == 'cuda' and not args.no_compile and not args.smoke
    dev_name = torch.cuda.get_device_name(device) if device.type == 'cuda' else (platform.processor() or platform.machine() or 'cpu')
    notes = []
    print(f'device {dev_name}, dtype {dtype}, torch {torch.__version__}, diffusers {diffusers.__version__}', flush=True)

    t_build = time.perf_counter()
    pipe = build_pipe(args, device, dtype)
    sources = synthetic_sources(args.jobs, args.size)
    jobs = make_jobs(args.jobs, [args.strength] * args.jobs, args, 'd')
    warm = make_jobs(args.batch, [args.strength] * args.batch, args, 'w')
    rng = np.random.default_rng(0)
    mixed = rng.choice([0.25, 0.5, 0.75, 1.0], size=args.jobs)
    dafusion, dafusion_warm = make_jobs(args.jobs, mixed, args, 'e'), make_jobs(args.jobs, mixed, args, 'f')
    print(f'built pipeline and {args.jobs} sources in {time.perf_counter() - t_build:.1f} s', flush=True)
    res, secs = {}, {}
    root = Path(tempfile.mkdtemp(prefix='bench-gen-'))

    with torch.no_grad():
        if 'a' in args.only:
            res['a'] = time_diffusers(pipe, sources, jobs[:args.single], 1, device, warmup=2)
            print(f"(a) {res['a']:.2f} img/s", flush=True)
        if 'b' in args.only:
            res['b'] = time_diffusers(pipe, sources, jobs, args.batch_b, device)
            print(f"(b) {res['b']:.2f} img/s", flush=True)
        agree = None
        if 'd' in args.only:   # references before the models are optimised (eager diffusers, this dtype and fp32)
            aj = jobs[:args.agree]
            ref_lo = agreement_refs(pipe, sources, aj)
            pipe32 = pipe if dtype == torch.float32 else build_pipe(args, device, torch.float32)
            ref32 = agreement_refs(pipe32, sources, aj)
            eng32 = generate_arrays(pipe32, aj, sources, size=args.size, batch_size=len(aj))
            eng32_one = generate_arrays(pipe32, aj, sources, size=args.size, batch_size=1)
            agree = dict(jobs=len(aj), fp32_batch1_max_abs=float(np.abs(eng32_one - ref32).max()),
                         fp32_max_abs=float(np.abs(eng32 - ref32).max()), fp32_mean_abs=float(np.abs(eng32 - ref32).mean()),
                         diffusers_lowp_vs_fp32_mean_abs=float(np.abs(ref_lo - ref32).mean()))
            if pipe32 is not pipe: del pipe32
            if device.type == 'cuda': torch.cuda.empty_cache()
        if set('cde') & set(args.only):
            optimise(pipe, compile_models)
            notes.append(f'model speed-ups for (c)-(e): channels-last, fused QKV, torch.compile={compile_models} (UNet, VAE encoder and decoder)')
        if 'c' in args.only:
            t0 = time.perf_counter()
            res['c'] = time_diffusers(pipe, sources, jobs, args.batch, device)
            secs['c_total_with_warmup'] = time.perf_counter() - t0
            print(f"(c) {res['c']:.2f} img/s", flush=True)
        engine_kw = dict(size=args.size, attention='flash', writers=max(2, min(8, (os.cpu_count() or 2) // 2)), compress_level=1)
        if set('de') & set(args.only) and device.type == 'cuda': torch.backends.cudnn.benchmark = True
        if 'd' in args.only:
            try: res['d'], secs['d'], info_d = time_engine(pipe, sources, jobs, warm, args.batch, root / 'd', device, engine_kw)
            except RuntimeError as e:
                if 'kernel' not in str(e).lower(): raise
                notes.append(f'flash attention unavailable ({str(e)[:120]}); (d)/(e) ran with the default SDPA backend')
                engine_kw['attention'] = None
                res['d'], secs['d'], info_d = time_engine(pipe, sources, jobs, warm, args.batch, root / 'd', device, engine_kw)
            print(f"(d) {res['d']:.2f} img/s", flush=True)
            eng_lo = generate_arrays(pipe, jobs[:args.agree], sources, size=args.size, batch_size=args.agree, attention=engine_kw['attention'])
            agree['engine_lowp_vs_diffusers_lowp_mean_abs'] = float(np.abs(eng_lo - ref_lo).mean())
            agree['engine_lowp_vs_diffusers_lowp_max_abs'] = float(np.abs(eng_lo - ref_lo).max())
            floor = agree['diffusers_lowp_vs_fp32_mean_abs']
            agree['within_lowp_noise'] = bool(agree['engine_lowp_vs_diffusers_lowp_mean_abs'] <= 2 * floor + 1e-3)
            agree['rule'] = 'engine-vs-diffusers mean |diff| (both optimised/eager in the low-precision dtype) <= 2 x diffusers low-precision-vs-fp32 mean |diff| + 1e-3'
        if 'e' in args.only:
            res['e'], secs['e'], info_e = time_engine(pipe, sources, dafusion, dafusion_warm, args.batch, root / 'e', device, engine_kw)
            print(f"(e) {res['e']:.2f} img/s", flush=True)
    shutil.rmtree(root, ignore_errors=True)

    out = dict(device=dev_name, device_type=device.type, date=datetime.date.today().isoformat(),
               versions=dict(python=platform.python_version(), torch=torch.__version__, diffusers=diffusers.__version__,
                             cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if device.type == 'cuda' else None),
               config=dict(model='tiny_random_sd (smoke)' if args.smoke else 'SD 1.5 architecture, random weights', size=args.size,
                           scheduler='DPM-Solver++ (dpmsolver++, order 2)', steps=args.steps, strength=args.strength,
                           guidance=args.guidance, jobs=args.jobs, single_timed=args.single, batch_b=args.batch_b, batch=args.batch,
                           dtype=str(dtype).replace('torch.', ''), compile=compile_models, smoke=args.smoke),
               img_per_s={NAMES[k]: round(v, 4) for k, v in res.items()}, seconds={k: round(v, 3) for k, v in secs.items()}, notes=notes)
    if 'd' in res:
        out['img_per_s_engine_internal_d'] = info_d.get('images_per_s')
        out['steps_per_image'] = dict(d=steps_run(jobs[0]))
    if 'e' in res:
        total_steps = sum(steps_run(j) for j in dafusion)
        out.setdefault('steps_per_image', {})['e_mean'] = total_steps / len(dafusion)
        out['e_groups'] = {str(s): int((mixed == s).sum()) for s in (0.25, 0.5, 0.75, 1.0)}
        out['e_batches'] = info_e.get('batches')
    if agree is not None: out['agreement'] = agree
    return out, dev_name


def merge(old, new):
    "Update nested dicts (a split run fills in the settings it ran)."
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(old.get(k), dict): merge(old[k], v)
        elif isinstance(v, list) and isinstance(old.get(k), list): old[k] = old[k] + [x for x in v if x not in old[k]]
        else: old[k] = v
    return old


def summarise(out):
    "Ratios and targets from whatever settings the JSON holds."
    r, s = out.get('img_per_s', {}), out.get('steps_per_image', {})
    ratios, targets = {}, {}
    a, c, d, e = (r.get(NAMES[k]) for k in 'acde')
    if d and a: ratios['d_over_a'] = round(d / a, 3); targets['d >= 7.5 x a'] = ratios['d_over_a'] >= 7.5
    if d and c: ratios['d_over_c'] = round(d / c, 3); targets['d >= 1.1 x c'] = ratios['d_over_c'] >= 1.1
    if d: targets['d >= 14 img/s (H100)'] = d >= 14
    if out.get('config', {}).get('smoke'): targets = {}   # the targets are about the GPU workload
    if d and e and s.get('d') and s.get('e_mean'):
        ratios['e_over_d_per_step'] = round((1 / e / s['e_mean']) / (1 / d / s['d']), 3)
        targets['e per-step cost <= 1.15 x d'] = ratios['e_over_d_per_step'] <= 1.15
    out['ratios'], out['targets'] = ratios, targets
    return out


def table(out):
    cfg, r = out['config'], out.get('img_per_s', {})
    a = r.get(NAMES['a'])
    lines = [f"{out['device']} | {cfg['model']} | {cfg['size']} px, {cfg['steps']} steps, strength {cfg['strength']}, CFG {cfg['guidance']}, "
             f"{cfg['jobs']} jobs, {cfg['dtype']}", f"{'setting':<58}{'img/s':>9}{'vs (a)':>9}"]
    for k in 'abcde':
        v = r.get(NAMES[k])
        if v is None: continue
        lab = f"({k}) " + LABELS[k].format(b=cfg['batch_b'], c=cfg['batch'], d=cfg['batch'], dt=cfg['dtype'], comp=', compile' if cfg['compile'] else '')
        lines.append(f"{lab:<58}{v:>9.2f}{(f'{v / a:.2f}x' if a else ''):>9}")
    for k, v in out.get('ratios', {}).items(): lines.append(f'{k}: {v}')
    for k, v in out.get('targets', {}).items(): lines.append(f"target {k}: {'met' if v else 'NOT met'}")
    if 'agreement' in out: lines.append('agreement: ' + json.dumps({k: v for k, v in out['agreement'].items() if k != 'rule'}))
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    out, dev_name = run(args)
    path = args.out or Path(__file__).resolve().parent / 'results' / f'{device_slug(dev_name)}-{out["date"]}.json'
    if path.exists():
        try: out = merge(json.loads(path.read_text()), out)
        except json.JSONDecodeError: pass
    out = summarise(out)
    from diffda_nb.core import write_json
    write_json(out, path)
    print(table(out)); print(f'wrote {path}')
    return out


if __name__ == '__main__':
    main()
