"""The ``fedseed`` command.

    fedseed train [--model minilm|smollm2] [--steps N] ...   # ZO fine-tuning, one process
    fedseed simulate [--config FILE] [--set KEY=VALUE] ...   # many clients, one process
    torchrun --nproc-per-node 3 .venv/bin/fedseed peer ...    # serverless one-byte peers
    fedseed export --run RUN --out DIR                        # the run's model as a HF checkpoint
    fedseed status RUN / fedseed report RUN                   # what a run did, as text / PNG plots
    fedseed fetch-assets                                      # download data, convert models

User mistakes and missing assets end with one ``error:`` line and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from fedseed.errors import ConfigError, FedseedError
from fedseed.paths import claim_run_folder

log = logging.getLogger("fedseed")


def _train(args: argparse.Namespace) -> int:
    from fedseed.train import TrainConfig, run_training

    config = TrainConfig(
        model=args.model, domain=args.domain, trainable=tuple(args.trainable or ()),
        lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, lora_targets=tuple(args.lora_target or ()),
        steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
        lr=args.lr, eps=args.eps, eval_size=args.eval_size, seed=args.seed, codec=args.codec,
        distribution=args.distribution,
        run_name=args.run_name, out_dir=Path(args.out), progress=not args.no_progress,
    )  # fmt: skip
    config.validate()
    claim_run_folder(config.out_dir / config.run_name, args.force)  # never over another run unasked
    report = run_training(config)
    print(f"accuracy before: {report.accuracy_before:.4f}")
    print(f"accuracy after:  {report.accuracy_after:.4f}")
    print(f"steps applied: {report.steps_applied} (skipped {report.steps_skipped}), "
          f"{report.seconds_per_step:.3f} s/step")  # fmt: skip
    print(f"model hash: {report.final_hash}")
    print(f"run folder: {report.run_dir} (manifest.json, ledger.jsonl)")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from fedseed import simulate

    overrides = simulate.parse_overrides(args.set or [])
    if args.engine:
        overrides["engine"] = args.engine
    if args.ray_address:
        overrides["ray_address"] = args.ray_address
    if args.out:
        overrides["out_dir"] = args.out
    if args.no_progress:
        overrides["progress"] = False
    config = simulate.load_config(Path(args.config) if args.config else None, overrides)
    claim_run_folder(config.out_dir / config.run_name, args.force)  # never over another run unasked
    if config.engine != "inprocess":
        engines = {ep.name: ep for ep in entry_points(group="fedseed.engines")}
        if config.engine not in engines:
            raise ConfigError(
                f"engine {config.engine!r} is not installed (found: {', '.join(engines) or 'none'})"
            )
        report = engines[config.engine].load()(config)
    else:
        report = simulate.run_simulation(config)
    print(f"held-out loss {report.loss_before:.4f} -> {report.loss_after:.4f}, "
          f"accuracy {report.accuracy_before:.4f} -> {report.accuracy_after:.4f}")  # fmt: skip
    print(f"{report.rounds} rounds, {report.client_steps} client steps, "
          f"{report.bytes_up + report.bytes_down:,} bytes on the wire, {report.seconds:.1f} s")  # fmt: skip
    print(f"model hash: {report.final_hash}")
    print(f"run folder: {report.run_dir} (ledger.jsonl, metrics.jsonl, summary.json)")
    return 0


def _fetch_assets(args: argparse.Namespace) -> int:
    from fedseed import data, models

    print(f"VADER ratings: {data.fetch_vader(force=args.force)}")
    print(f"all-MiniLM-L6-v2: {models.minilm_dir()}")
    print(f"SmolLM2-135M (safetensors cache): {models.smollm2_dir()}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from fedseed.export import export_run

    report = export_run(
        Path(args.run), Path(args.out), rounds=args.rounds, force=args.force, progress=not args.no_progress
    )
    verified = (
        "verified against the run's record"
        if report.verified_at == report.rounds
        else f"verified up to round {report.verified_at} (no hash recorded after round {report.rounds})"
    )
    print(f"exported {report.run} ({report.kind}) after {report.rounds} rounds, {report.steps} ledger steps")
    print(f"model hash: {report.model_hash} ({verified})")
    print(f"checkpoint: {report.out} (transformers: AutoModel*.from_pretrained, no fedseed needed)")
    return 0


def _status(args: argparse.Namespace) -> int:
    import json

    from fedseed.report import status, status_text
    from fedseed.runs import open_run

    summary = status(open_run(Path(args.run)))
    print(json.dumps(summary, indent=2) if args.json else status_text(summary))
    return 0


def _report(args: argparse.Namespace) -> int:
    from fedseed.report import report
    from fedseed.runs import open_run

    record = open_run(Path(args.run))
    out = Path(args.out) if args.out else (record.path if record.path.is_dir() else record.path.parent)
    result = report(record, out)
    for path in result.written:
        print(path)
    for name, why in result.not_drawn.items():
        print(f"not drawn: {name}: {why}")
    return 0


def _manifest(args: argparse.Namespace) -> int:
    from fedseed import models
    from fedseed.manifest import build_manifest, manifest_toml
    from fedseed.zo import TrainableSet

    if args.config:  # exactly what `fedseed client --config` builds and sends at join
        from fedseed import simulate

        config = simulate.load_config(Path(args.config))
        _, engine = simulate.build_model(config)
        print(
            manifest_toml(build_manifest(engine.model, engine.trainable.names, simulate.task_id(config))),
            end="",
        )
        return 0
    if not args.trainable:
        raise ConfigError("fedseed manifest needs --trainable REGEX (repeatable) or --config SIM.toml")
    model, _ = models.load_model(args.model, num_labels=2, init_seed=args.init_seed)
    trainable = TrainableSet.from_model(model, include=args.trainable)
    print(manifest_toml(build_manifest(model, trainable.names, args.task)), end="")
    return 0


def build_parser(plugins: Sequence[str] = ()) -> argparse.ArgumentParser:
    from fedseed import models
    from fedseed.train import TrainConfig

    d = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="fedseed",
        description="Seed-only federated ZO training.",
        epilog="more commands: " + ", ".join([*plugins, "peer (under torchrun)"]) + " (each has --help)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="ZO fine-tuning of a real model in one process")
    train.add_argument("--model", default=d.model, choices=list(models.MODEL_NAMES))
    train.add_argument("--domain", default=d.domain, choices=["movies", "tweets", "amazon", "nyt"])
    train.add_argument(
        "--trainable",
        action="append",
        metavar="REGEX",
        help="parameter-name pattern to train (repeatable); default: the model's own (fedseed.train)",
    )
    train.add_argument("--lora-rank", type=int, default=d.lora_rank, help="> 0: ZO over LoRA adapters")
    train.add_argument("--lora-alpha", type=int, default=d.lora_alpha)
    train.add_argument("--lora-target", action="append", metavar="MODULE", help="default: query and value")
    train.add_argument("--steps", type=int, default=d.steps)
    train.add_argument("--batch-size", type=int, default=d.batch_size)
    train.add_argument("--max-length", type=int, default=d.max_length)
    train.add_argument("--lr", type=float, default=None, help="default: the model's (see fedseed.train)")
    train.add_argument("--eps", type=float, default=d.eps)
    train.add_argument("--eval-size", type=int, default=d.eval_size)
    train.add_argument(
        "--distribution",
        default=d.distribution,
        choices=["rademacher", "gaussian"],
        help="perturbation z; gaussian is not bit-exact across devices (the manifest says so)",
    )
    train.add_argument(
        "--codec",
        default=d.codec,
        choices=["none", "log", "int8"],
        help="send each scalar as one byte; every participant applies the decoded value",
    )
    train.add_argument("--seed", type=int, default=d.seed)
    train.add_argument("--run-name", default=d.run_name)
    train.add_argument("--out", default=str(d.out_dir), help="folder for run folders")
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--force", action="store_true", help="replace an existing run folder of this name")
    train.set_defaults(func=_train)

    manifest = sub.add_parser("manifest", help="print a coordinator config's [manifest] block for a model")
    manifest.add_argument("--model", default="minilm", choices=list(models.MODEL_NAMES))
    manifest.add_argument("--trainable", action="append", metavar="REGEX")
    manifest.add_argument(
        "--config",
        help="a simulation config (TOML): the manifest of its model, trainable set and LoRA adapters",
    )
    manifest.add_argument("--task", default="vader-movies/minilm-seqcls")
    manifest.add_argument("--init-seed", type=int, default=0, help="seed of new (head) weights")
    manifest.set_defaults(func=_manifest)

    sim = sub.add_parser(
        "simulate",
        help="many FedKSeed clients in one process (shared model copy)",
        description="Settings: a TOML file (--config; see configs/simulate-default.toml) and/or --set "
        "KEY=VALUE (e.g. --set rounds=20 --set curriculum.ordering=curriculum). "
        "Without either: the built-in default (SmolLM2, VADER movies, 20 clients).",
    )
    sim.add_argument("--config", help="TOML file (fedseed.simulate.SimulationConfig)")
    sim.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one setting (repeatable)")
    sim.add_argument("--engine", help="inprocess (default) or flower")
    sim.add_argument("--ray-address", help="flower engine: attach to this Ray cluster head (host:port)")
    sim.add_argument("--out", help="folder for run folders (default runs/)")
    sim.add_argument("--no-progress", action="store_true")
    sim.add_argument("--force", action="store_true", help="replace an existing run folder of this name")
    sim.set_defaults(func=_simulate)

    run_help = "a run folder (fedseed simulate/train) or a coordinator database"
    export = sub.add_parser(
        "export",
        help="rebuild a run's model from base model + ledger as a Hugging Face checkpoint",
        description="Rebuilds the model (base model + ledger replay), checks it against the hashes the run "
        "recorded, and writes safetensors + config + tokenizer that transformers loads without fedseed.",
    )
    export.add_argument("--run", required=True, help=run_help)
    export.add_argument("--out", required=True, help="checkpoint folder to write")
    export.add_argument("--rounds", type=int, help="the model after this many rounds (default: all)")
    export.add_argument("--force", action="store_true", help="replace a non-empty --out")
    export.add_argument("--no-progress", action="store_true")
    export.set_defaults(func=_export)

    stat = sub.add_parser("status", help="rounds, clients, bytes and latest metrics of a run")
    stat.add_argument("run", help=run_help)
    stat.add_argument("--json", action="store_true", help="one JSON object instead of text")
    stat.set_defaults(func=_status)

    rep = sub.add_parser("report", help="PNG plots of a federated run (accuracy/loss, bytes, participation)")
    rep.add_argument("run", help=run_help)
    rep.add_argument("--out", help="folder for the PNGs (default: the run folder / the database's folder)")
    rep.set_defaults(func=_report)

    fetch = sub.add_parser("fetch-assets", help="download VADER data, convert SmolLM2 once")
    fetch.add_argument("--force", action="store_true")
    fetch.set_defaults(func=_fetch_assets)
    return parser


def _plugin_commands() -> dict[str, EntryPoint]:
    """Commands the transports register (``fedseed coordinator``, ``fedseed client``).

    They are found through the ``fedseed.commands`` entry-point group, so this
    core module never imports the transports (layering, checked by import-linter).
    """
    return {ep.name: ep for ep in entry_points(group="fedseed.commands")}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "peer":  # launched by torchrun: its own argument parser
        from fedseed import peer

        return peer.main(argv[1:])
    plugins = _plugin_commands()
    if argv and argv[0] in plugins:
        return int(plugins[argv[0]].load()(argv[1:]))
    args = build_parser(sorted(plugins)).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except FedseedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
