"""The ``infmae`` command: pretrain, visualize, export, curate, pack."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

import torch

from infmae.config import PRESETS, Config, ModelConfig, apply_overrides, preset, resolve_for_device
from infmae.data.mapping import DEFAULT_MAPPING, SIXTEEN_BIT_MODES, SixteenBitMapping
from infmae.logging_utils import log_failure, setup_logging

log = logging.getLogger("infmae")


def _pretrain(args: argparse.Namespace) -> int:
    from infmae.training.checkpoint import require_checkpoint
    from infmae.training.distributed import init_distributed, teardown
    from infmae.training.trainer import Trainer

    output = Path(args.output or f"runs/{args.preset or 'demo'}")
    if args.resume == "must":
        require_checkpoint(output)  # before anything is written: a mistyped --output creates nothing
    saved = output / "config.json"
    if args.resume != "never" and args.preset is None and saved.is_file():
        config = Config.from_dict(json.loads(saved.read_text()))  # resume with the run's own config
    else:
        config = preset(args.preset or "demo")
    overrides = list(args.set or [])
    if args.data is not None:
        overrides.append(f"data.path={args.data}")
    config = apply_overrides(config, overrides)
    # under torchrun: join the process group (RANK, WORLD_SIZE, ...), once: the trainer is handed it
    info = init_distributed(config.train.device, timeout_s=config.train.collective_timeout_s)
    fresh = not output.exists()
    setup_logging(output, rank=info.rank)
    trainer = None
    try:
        trainer = Trainer(config, output, resume=args.resume, dist_info=info)
        summary = trainer.fit()
    except KeyboardInterrupt:
        kept = trainer.checkpointer.last_good() if trainer is not None else None
        log.error(
            "aborted by a second Ctrl-C%s; the newest complete checkpoint is %s%s",
            f" in step {trainer.step + 1}" if trainer is not None else "",
            kept or "none",
            f": continue with: infmae pretrain --output {output} --resume" if kept else "",
        )
        return 128 + signal.SIGINT
    except ValueError as error:  # a user error, said in one line
        log.error("%s", error)
        return 2
    except Exception as error:  # noqa: BLE001 - one line here, the traceback in train.log
        log_failure(f"pretrain failed: {error}", error, output)
        return 1
    finally:
        if trainer is None and fresh and info.rank == 0:  # a failed start leaves no half-made run folder
            _forget_run_folder(output)
        teardown()
    if summary.stopped_by is not None:  # 128 + signal, as a shell reports a process the signal ended
        return 128 + summary.stopped_by
    log.info(
        "done: step %d, loss %s -> %.4f, checkpoint %s",
        summary.steps,
        "n/a" if summary.first_loss is None else f"{summary.first_loss:.4f} (step {summary.first_step})",
        summary.last_loss or float("nan"),
        summary.checkpoint,
    )
    return 0


def _forget_run_folder(output: Path) -> None:
    import shutil

    setup_logging()  # closes the handler of output/train.log
    shutil.rmtree(output, ignore_errors=True)


def _load_model(checkpoint_path: str):
    """-> (model, config) from our checkpoint or a released one ({'model': state_dict, ...})."""
    from infmae.model.convert import extract_model_state, infer_in_chans
    from infmae.model.infmae import InfMAE
    from infmae.training.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint_path)
    model_state = extract_model_state(state)
    if isinstance(state.get("config"), dict):
        config = Config.from_dict(state["config"])
    else:  # a released checkpoint: the official recipe, sizes read off the tensors
        config = preset("official_base")
        config.model = ModelConfig(score="official", order="ascending", in_chans=infer_in_chans(model_state))
        log.info("checkpoint has no config: assuming the released model (official score, ascending order)")
    model = InfMAE(config.model)
    model.load_state_dict(model_state, strict=True)
    return model.eval(), config


def _visualize(args: argparse.Namespace) -> int:
    from infmae.data.preview import load_preview_batch
    from infmae.training.evaluation import masked_errors
    from infmae.training.visualize import reconstruction_panels, save_grid

    setup_logging()
    model, config = _load_model(args.checkpoint)
    images, used = load_preview_batch(args.images, config)
    if not used:
        raise SystemExit("visualize: expected at least one readable image, got none; see the warnings above")
    with torch.no_grad():
        out = model(images)
    errors, _ = masked_errors(images, out.pred, out.mask, config.model.norm_pix_loss)
    panels = reconstruction_panels(images, out.pred, out.mask, config.data.mean, config.data.std)
    labels = [f"{Path(name).name}\nMSE {float(e):.3f}" for name, e in zip(used, errors)]
    path = save_grid(panels, args.output, max_rows=len(used), row_labels=labels)
    log.info(
        "wrote %s (rows: %s; columns: original | masked | reconstruction | reconstruction + visible)",
        path,
        ", ".join(f"{name} (masked MSE {float(e):.4f})" for name, e in zip(used, errors)),
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from infmae.model.convert import convert_in_chans, extract_model_state
    from infmae.model.infmae import encoder_state_dict
    from infmae.training.checkpoint import load_checkpoint, save_atomically

    setup_logging()
    state = extract_model_state(load_checkpoint(args.checkpoint))
    if args.in_chans is not None:
        state = convert_in_chans(state, args.in_chans)
    encoder = {k: v.detach().cpu().clone() for k, v in encoder_state_dict(state).items()}
    if not encoder:
        raise ValueError(
            f"export: expected the encoder's tensors (patch_embed1..4, blocks1..3, pos_embed, norm) in "
            f"{args.checkpoint}, got none of its {len(state)} model tensors; is this an InfMAE checkpoint?"
        )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    save_atomically(Path(args.output), {"model": encoder})
    log.info(
        "wrote %s: %d encoder tensors, %d elements", args.output, len(encoder), sum(v.numel() for v in encoder.values())
    )
    return 0


def _config(args: argparse.Namespace) -> int:
    from infmae.config_help import format_fields

    config = apply_overrides(preset(args.preset), list(args.set or []))
    if args.action == "fields":
        print(format_fields(config))
    else:  # what a run on that device writes to its config.json
        from infmae.training.hardware import pick_device

        print(resolve_for_device(config, args.device or pick_device(config.train.device).type).to_json())
    return 0


def _plot(args: argparse.Namespace) -> int:
    from infmae.training.plots import plot_run

    setup_logging()
    path = plot_run(args.run, args.output)
    log.info("wrote %s", path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infmae", description="InfMAE pretraining engine")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "pretrain",
        help="pretrain InfMAE (one process; torchrun for several)",
        epilog="Every field that --set takes, with its type, default and meaning: infmae config fields "
        "[--preset NAME]. The resolved configuration a run uses (on CUDA the engine, train.engine=reference for the "
        "eager model): infmae config show [--preset NAME] [--set ...] [--device cuda|cpu].",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="named configuration (default: demo)")
    p.add_argument("--data", default=None, help="image folder or manifest.csv (default: synthetic images)")
    p.add_argument("--output", default=None, help="run folder (default: runs/PRESET)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. train.blr=1e-3")
    p.add_argument(
        "--resume",
        nargs="?",
        const="must",
        default="never",
        choices=("must", "auto"),
        help="continue the run in --output from its newest intact checkpoint (an error when it has none); "
        "--resume=auto starts a new run when there is nothing to continue (for job scripts and requeues)",
    )
    p.set_defaults(func=_pretrain)

    f = commands.add_parser("config", help="list the configuration fields, or show a resolved configuration")
    f.add_argument("action", choices=("fields", "show"), help="fields: every field with its docs; show: JSON")
    f.add_argument("--preset", choices=sorted(PRESETS), default="demo", help="named configuration (demo)")
    f.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field")
    f.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="show: resolve the device-dependent defaults (train.engine=auto) for this device "
        "(default: this machine's)",
    )
    f.set_defaults(func=_config)

    g = commands.add_parser("plot", help="draw a run's curves (loss, val loss, lr, img/s, data wait, MFU)")
    g.add_argument("run", help="a run folder (its metrics.jsonl)")
    g.add_argument("-o", "--output", default=None, help="PNG to write (default RUN/curves.png)")
    g.set_defaults(func=_plot)

    v = commands.add_parser("visualize", help="original / masked / reconstruction grids for images")
    v.add_argument("checkpoint", help="a checkpoint file or a run folder")
    v.add_argument("images", nargs="+", help="image files")
    v.add_argument("-o", "--output", default="reconstructions.png")
    v.set_defaults(func=_visualize)

    e = commands.add_parser("export", help="write the encoder for downstream use: {'model': encoder state dict}")
    e.add_argument("checkpoint", help="a checkpoint file or a run folder")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--in-chans", type=int, choices=(1, 3), default=None, help="convert the input channels")
    e.set_defaults(func=_export)

    c = commands.add_parser("curate", help="scan, filter and deduplicate an image folder: OUT/manifest.csv + report")
    c.add_argument("src", help="folder tree of images to curate")
    c.add_argument("-o", "--output", required=True, help="output folder (manifest.csv, report.md, scan.sqlite)")
    c.add_argument("--min-size", type=int, default=20, help="drop images whose both sides are under it, px (20)")
    c.add_argument(
        "--hamming", type=int, default=6, help="pHash distance of candidate pairs, 0-24 (6); confirmed by content"
    )
    c.add_argument("--anchor", choices=("largest", "entropy"), default="largest", help="which group member is kept")
    c.add_argument(
        "--sequence-aware",
        action="store_true",
        help="frames named in order within a folder: keep a new key frame whenever the scene drifts",
    )
    c.add_argument("--workers", type=int, default=None, help="scan processes (default: every core)")
    c.add_argument(
        "--rescan",
        action="store_true",
        help="read every file again, replacing OUT/scan.sqlite (a damaged one is set aside and rebuilt anyway)",
    )

    def _curate(args: argparse.Namespace) -> int:
        from infmae.curate.pipeline import run

        setup_logging()
        return run(args)

    c.set_defaults(func=_curate)

    k = commands.add_parser("pack", help="write a training copy as LZ4 shards of raw pixels (for the DALI loader)")
    k.add_argument("src", help="image folder, or a curate manifest.csv (its kept rows)")
    k.add_argument("-o", "--output", required=True, help="pack folder to create")
    k.add_argument("--max-side", type=int, default=None, help="cap the longer side, px (lossy; default: lossless)")
    k.add_argument(
        "--min-size", type=int, default=20, help="leave out images whose both sides are under it, px (20; 0: none)"
    )
    k.add_argument("--shard-mb", type=int, default=1024, help="shard size, MB (1024)")
    k.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
    k.add_argument("--data-root", default=None, help="for a manifest: the folder its paths start from")
    k.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="for a manifest: accept rows whose path leads outside that folder (.., absolute paths)",
    )
    k.add_argument(
        "--sixteen-bit-mode",
        default=DEFAULT_MAPPING.mode,
        choices=SIXTEEN_BIT_MODES,
        help="mapping whose ranges are stored; match data.sixteen_bit_mode (percentile)",
    )
    k.add_argument(
        "--low", type=float, default=DEFAULT_MAPPING.low, help="low percentile of that mapping (%(default)s)"
    )
    k.add_argument(
        "--high", type=float, default=DEFAULT_MAPPING.high, help="high percentile of that mapping (%(default)s)"
    )
    k.set_defaults(func=_pack)
    return parser


def _pack(args: argparse.Namespace) -> int:
    from infmae.data.catalogue import scan_folder
    from infmae.data.manifest import manifest_base, read_manifest
    from infmae.data.packed import pack_dataset

    setup_logging()
    src = Path(args.src)
    if src.is_file() and src.suffix.lower() == ".csv":
        root = Path(args.data_root) if args.data_root else manifest_base(src)
        files, _ = read_manifest(src, root=root, allow_outside_root=args.allow_outside_root)
    elif src.is_dir():
        root, files = src, scan_folder(src)
    else:
        raise ValueError(f"pack: expected an image folder or a manifest .csv, got {src!r}; check the path")
    if not files:
        raise ValueError(f"pack: expected image files in {src}, got none; check the path and extensions")
    info = pack_dataset(
        files,
        root,
        args.output,
        max_side=args.max_side,
        shard_bytes=args.shard_mb << 20,
        workers=args.workers,
        mapping=SixteenBitMapping(args.sixteen_bit_mode, args.low, args.high),
        source=str(src),
        min_size=args.min_size,
    )
    log.info(
        "packed %d images into %s (%d left out, listed in its pack.json); train on it with --data %s",
        info["count"],
        args.output,
        len(info["skipped"]),
        args.output,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
