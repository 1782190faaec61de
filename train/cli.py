"""One entry point: ``python -m train <command>``.

Commands:
    demo-data  build the built-in demo dataset from photos that packages ship
    train      fine-tune Inception V3 on a positive/negative folder, log to MLflow, export
    tune       Optuna search over training options; every trial is a nested MLflow run
    registry   MLflow model registry: list versions, promote an alias, fetch a bundle
    export     re-export TorchScript + spec + threshold from a training checkpoint
    export-onnx  add model.onnx (parity-checked against TorchScript) to an export bundle
    export-int8  add model.int8.onnx (quantised; written only when its verdicts hold) to a bundle
    export-pt2   add model.pt2 (torch.export + AOTInductor, parity-checked) to a bundle
    predict    score an unlabelled image folder with an export bundle -> CSV
    evaluate   metrics, per-style breakdown, curves and worst-error sheets on a labelled folder
    review-export  moderators' decisions of the review page -> positive/ and negative/ training folders
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

from train.io import default_tracking_uri
from train.metrics import THRESHOLD_RULES
from train.model import BLOCKS, HEAD, LAST_BLOCKS, POOLS

log = logging.getLogger("train")


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r}: allowed are true/false")


def _augment(value: str) -> int:
    lowered = value.lower()
    levels = {"0": 0, "1": 1, "2": 2, "false": 0, "no": 0, "off": 0, "true": 1, "yes": 1, "on": 1}
    if lowered not in levels:
        raise argparse.ArgumentTypeError(f"{value!r}: allowed are 0, 1, 2 (or false = 0, true = 1)")
    return levels[lowered]


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Training options; every default is None so a --config file can supply it."""
    from train.config import SELECT_METRICS, TrainConfig

    d = {f.name: f.default for f in fields(TrainConfig)}
    a = parser.add_argument
    a("--data", type=str, help="folder with train/{positive,negative} (and optional val/) or {positive,negative}")
    a("--config", type=Path, help="JSON file of training options (e.g. tuned parameters); flags override it")
    a("--output", type=str, help=f"output folder: checkpoints, export, reports, cache, MLflow store (default {d['output']})")
    a("--weights", type=str, help=f"fid-inception | imagenet | none | PATH to a checkpoint (default {d['weights']})")
    a("--image-size", type=int, help=f"input side in pixels, part of the preprocessing spec (default {d['image_size']})")
    a("--resize", choices=("squash", "letterbox"), help=f"resize policy (default {d['resize']})")
    a("--pool", choices=POOLS, help=f"global pooling of the last feature map (default {d['pool']})")
    a("--last-block", choices=tuple(LAST_BLOCKS),
      help=f"block the head sits on; Mixed_6e keeps the finer 17x17 stage and drops the Mixed_7 blocks (default {d['last_block']})")
    a("--dropout", type=float, help=f"dropout before the fc layer (default {d['dropout']})")
    a("--epochs", type=int, help=f"total epochs (default {d['epochs']})")
    a("--head-epochs", type=int, help=f"first epochs that train the heads only (default {d['head_epochs']})")
    a("--unfreeze-from", choices=(HEAD, *BLOCKS), help=f"first block trained after the head stage (default {d['unfreeze_from']})")
    a("--batch-size", type=int, help=f"batch size (default {d['batch_size']})")
    a("--lr", type=float, help=f"learning rate of the heads (default {d['lr']})")
    a("--lr-schedule", choices=("constant", "cosine"), help=f"learning rate over the run: constant, or cosine decay to 0 per step (default {d['lr_schedule']})")
    a("--backbone-lr-mult", type=float, help=f"backbone lr = lr x this (default {d['backbone_lr_mult']})")
    a("--weight-decay", type=float, help=f"AdamW weight decay (default {d['weight_decay']})")
    a("--pos-weight", type=str, help="positive-class loss weight: auto (= negatives/positives) or a number")
    a("--aux-weight", type=float, help=f"weight of the aux-head loss (default {d['aux_weight']})")
    a(
        "--augment", type=_augment,
        help="augmentation strength, as cached extra views of every training image: 0 none, 1 mirrored, "
        f"2 mirrored + a re-exposed, re-encoded copy (true = 1, false = 0; default {d['augment']})",
    )
    a(
        "--overlay-negatives", type=float,
        help="synthetic watermarked copies per clean training photo, paired with it (training style pool); "
        "a fraction such as 0.5 marks a seeded half of them (default 0)",
    )
    a("--val-fraction", type=float, help=f"validation share when there is no val/ folder (default {d['val_fraction']})")
    a(
        "--holdout-fraction", type=float,
        help="share of all labelled photos set aside as a held-out test split (by duplicate group), never trained, "
        "selected or thresholded on; listed in OUTPUT/reports/holdout.csv for `evaluate` (default 0)",
    )
    a(
        "--relabel", type=str, metavar="CSV",
        help="relabel file (columns file,label,reason; file relative to DATA/train, label positive|negative|exclude) "
        "applied before any split; what it changed is listed in OUTPUT/reports/relabelled.csv (default none)",
    )
    a(
        "--holdout-curve", type=_bool,
        help="also score the held-out split after every epoch at that epoch's validation threshold (holdout_* in "
        "the history: a time-vs-quality curve for reports; never used to select anything) (default false)",
    )
    a("--train-fraction", type=float, help="train on this seeded share of the training crops, pairs kept together (default 1.0)")
    a("--seed", type=int, help=f"random seed (default {d['seed']})")
    a("--patience", type=int, help=f"early stop after this many epochs without improvement (default {d['patience']})")
    a("--select-metric", choices=SELECT_METRICS, help=f"validation metric for the best checkpoint (default {d['select_metric']})")
    a("--threshold-rule", choices=THRESHOLD_RULES, help=f"how the decision threshold is chosen on validation (default {d['threshold_rule']})")
    a("--threshold-target", type=float, help="target FPR (default 0.02) or precision (default 0.95) of that rule")
    a("--cache", type=_bool, help="cache features of the frozen lower blocks on disk (default true)")
    a("--cache-dir", type=str, help="feature cache folder, shareable between runs and trials (default OUTPUT/cache)")
    a("--cache-dtype", choices=("float16", "float32"), help=f"storage type of cached features (default {d['cache_dtype']}: half the disk)")
    a("--device", type=str, help=f"cpu, cuda or cuda:N (default {d['device']})")
    a(
        "--amp", choices=("none", "bf16", "fp16"),
        help="autocast precision of convolutions: bf16 (CPUs with AVX-512 BF16/AMX, GPUs), fp16 (GPUs) or none (default none)",
    )
    a("--channels-last", type=_bool, help=f"channels-last memory layout, faster with oneDNN and cuDNN (default {d['channels_last']})")
    a("--num-workers", type=int, help=f"data-loading worker processes (default {d['num_workers']})")
    a("--tracking-uri", type=str, help="MLflow tracking URI (default: embedded SQLite store in OUTPUT/mlflow, no server)")
    a("--experiment", type=str, help=f"MLflow experiment name (default {d['experiment']})")
    a("--run-name", type=str, help="MLflow run name")
    a("--resume", action="store_true", default=None, help="continue from OUTPUT/checkpoints/last.pt")
    a("--no-progress", dest="progress", action="store_false", default=None, help="hide progress bars")
    a("--no-export", dest="export", action="store_false", default=None, help="skip the TorchScript export")
    a(
        "--register", action="store_true", default=None,
        help="register the export in the MLflow model registry (first version -> alias champion, later -> challenger)",
    )
    a("--registered-model", type=str, help=f"registered model name (default {d['registered_model']})")


def config_from_args(args: argparse.Namespace):
    from train.config import TrainConfig, load_config_file

    values = load_config_file(args.config) if args.config else {}
    names = {f.name for f in fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    if "data" not in values:
        raise ValueError("--data is required (or a --config file with a 'data' entry)")
    return TrainConfig.from_dict(values)


def cmd_train(args: argparse.Namespace) -> int:
    from train.training import run_training

    result = run_training(config_from_args(args))
    m = result.val_metrics
    print(
        f"best {result.select_metric} {result.best_score:.4f} after {result.epochs_run} epochs | "
        f"val F1 {m['f1']:.3f} precision {m['precision']:.3f} recall {m['recall']:.3f} FPR {m['fpr']:.3f} "
        f"at threshold {result.threshold['threshold']:.4f} ({result.threshold['rule']})"
    )
    if result.export_dir:
        print(f"exported: {result.export_dir}  (next: scripts/create_mar.sh --export-dir {result.export_dir})")
    return 0


# A trial is a low-fidelity run unless these are given: half the training crops, two
# epochs that both fine-tune. Retrain the best options at full budget afterwards.
TUNE_FIDELITY = {"epochs": 2, "head_epochs": 0, "train_fraction": 0.5}


def cmd_tune(args: argparse.Namespace) -> int:
    from train.tune import StorageLost, TuneSettings, tune

    base = config_from_args(args)
    if base.register or base.resume:
        raise ValueError("tune: --register and --resume apply to train; rerun the same tune command to resume a study")
    given = set(_config_keys(args.config)) if args.config else set()
    given |= {k for k in TUNE_FIDELITY if getattr(args, k) is not None}
    for key, value in TUNE_FIDELITY.items():
        if key not in given:
            setattr(base, key, value)
    settings = TuneSettings(
        n_trials=args.n_trials, study_name=args.study_name, storage=args.storage, tune_dir=args.tune_dir, timeout=args.timeout,
        sampler_startup_trials=args.startup_trials, pruner_startup_trials=args.pruner_startup_trials,
        prune_from_epoch=args.prune_from_epoch, heartbeat_seconds=args.heartbeat,
        space_file=str(args.space) if args.space else None, baseline=args.baseline,
    )
    try:
        result = tune(base, settings)
    except StorageLost as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"interrupted: finished trials are kept in the study {settings.study_name!r}; "
            "rerun the same command to resume it", file=sys.stderr,
        )
        return 130
    counts = ", ".join(f"{v} {k.lower()}" for k, v in result.counts.items() if v)
    print(
        f"study {result.study_name}: {counts} in {result.seconds / 60:.1f} min, {result.trials_run_here} run by this worker "
        f"(storage {result.storage})"
    )
    if result.best_trial is None:
        print("no trial finished; nothing to write")
        return 1
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(result.best_params.items()))
    print(f"best trial {result.best_trial + 1}: {base.select_metric} {result.best_value:.4f} | {params}")
    full = "" if base.train_fraction == 1 and base.epochs >= 5 else " --epochs 6 --head-epochs 1 --train-fraction 1"
    print(f"best options: {result.best_config_path}")
    print(f"next, at full budget: python -m train train --config {result.best_config_path}{full} --register")
    return 0


def _config_keys(path: Path) -> set[str]:
    from train.config import load_config_file

    return set(load_config_file(path))


def cmd_registry(args: argparse.Namespace) -> int:
    from train import registry

    if args.tracking_uri:
        uri = args.tracking_uri
    elif args.output is None and os.environ.get("MLFLOW_TRACKING_URI"):
        uri = os.environ["MLFLOW_TRACKING_URI"]
    else:
        uri = default_tracking_uri(args.output or "artifacts")
    if args.action == "list":
        versions = registry.list_versions(uri, args.name)
        print(f"{'version':>7}  {'aliases':<22} {'threshold':>9} {'size':>5}  {'kind':<6}  run")
        for v in versions:
            print(
                f"{v.version:>7}  {','.join(v.aliases) or '-':<22} {v.tags.get('threshold', '?')[:9]:>9} "
                f"{v.tags.get('image_size', '?'):>5}  {v.kind:<6}  {v.run_id}"
            )
        return 0
    if args.action == "register":
        if args.run_id is None:
            raise ValueError("registry register: --run-id RUN is required (a training run that logged export/)")
        v = registry.register_run_export(uri, args.run_id, name=args.name, description=f"registered again from run {args.run_id}")
        print(f"{v.name} version {v.version} (an MLflow pyfunc model of run {args.run_id}'s export) is @{', @'.join(v.aliases)}")
        return 0
    if args.action == "promote":
        if args.version is None:
            raise ValueError("registry promote: --version N is required")
        v = registry.promote(uri, args.name, args.version, args.alias)
        print(f"{args.name} version {v.version} is now @{args.alias} (aliases: {', '.join(v.aliases)})")
        return 0
    if args.action == "fetch":
        if args.out is None:
            raise ValueError("registry fetch: --out DIR is required")
        model_uri = args.uri or f"models:/{args.name}@{args.alias}"
        v = registry.fetch(uri, model_uri, args.out, overwrite=args.overwrite)
        if args.print_version:
            print(v.version)
        else:
            print(f"fetched {model_uri} = {v.name} version {v.version} into {args.out}")
        return 0
    uri_of = args.uri or f"models:/{args.name}@{args.alias}"
    v = registry.resolve(uri, uri_of)
    print(json.dumps(v.to_dict(), indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from train.export import export_model, load_checkpoint

    model, spec, state = load_checkpoint(args.checkpoint)
    if "threshold" not in state and args.threshold is None:
        raise ValueError(f"--checkpoint {args.checkpoint}: has no chosen threshold; pass --threshold P (0 < P < 1)")
    threshold = {"threshold": args.threshold, "rule": "manual"} if args.threshold is not None else state["threshold"]
    config = state["config"]
    info = {"model_name": "watermark", "weights": config["weights"], "source_checkpoint": str(args.checkpoint), "config": config}
    result = export_model(model, spec, threshold, args.out, info=info)
    print(f"exported {args.out} (parity max |diff| {result['max_abs_diff']:.2e})")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from train.export import export_onnx

    result = export_onnx(args.export, tolerance=args.tolerance, opset=args.opset)
    print(
        f"wrote {result['path']} (opset {result['opset']}, max |logit diff| vs TorchScript {result['max_abs_diff']:.2e}); "
        f"archive it with: scripts/create_mar.sh --export-dir {args.export} --format onnx"
    )
    return 0


def _labelled(folder: Path, labels: Path | None, option: str) -> tuple[list[Path], list[int]]:
    from train.evaluate import collect_items

    try:
        items, _, _ = collect_items(folder, labels)
    except (ValueError, FileNotFoundError) as exc:  # its messages name evaluate's options
        raise type(exc)(str(exc).replace("--data ", f"{option} ").replace("--labels ", f"{option}-labels ")) from None
    return [item.path for item in items], [item.label for item in items]


def cmd_export_int8(args: argparse.Namespace) -> int:
    from train.quantize import INT8_FILE, export_int8

    val = _labelled(args.val, args.val_labels, "--val")
    check = _labelled(args.check, args.check_labels, "--check")
    r = export_int8(
        args.export, val, check, calibration_images=args.calibration_images, max_drop=args.max_drop, seed=args.seed
    )
    fp32, int8 = r["check"]["fp32"], r["check"]["int8"]
    print(
        f"wrote {args.export / INT8_FILE}: on {r['check_images']} check images F1 {int8['f1']:.4f} (fp32 {fp32['f1']:.4f}), "
        f"ROC-AUC {int8['roc_auc']:.4f} (fp32 {fp32['roc_auc']:.4f}), threshold {r['thresholds']['int8']:.4f} "
        f"(fp32 {r['thresholds']['fp32']:.4f}), {r['check_verdicts_changed']} verdict(s) changed; "
        f"archive it with: scripts/create_mar.sh --export-dir {args.export} --format onnx-int8"
    )
    return 0


def cmd_export_pt2(args: argparse.Namespace) -> int:
    from train.export import PT2_FILE, export_pt2

    r = export_pt2(args.export, args.checkpoint, tolerance=args.tolerance, max_batch=args.max_batch)
    print(
        f"wrote {args.export / PT2_FILE} in {r['seconds']:.0f} s (max |logit diff| vs eager {r['max_abs_diff']:.2e}, "
        f"batch 1-{r['max_batch']}); archive it with: scripts/create_mar.sh --export-dir {args.export} --format pt2"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from train.predict import predict_folder

    s = predict_folder(
        args.export, args.input, args.out, batch_size=args.batch_size, tta=args.tta, overwrite=args.overwrite,
        progress=args.progress,
    )
    print(
        f"{s['scored']} images scored, {s['watermarked']} watermarked, {s['skipped']} skipped "
        f"(threshold {s['threshold']:.4f}{', TTA' if s['tta'] else ''}) -> {s['out_csv']}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from train.evaluate import evaluate_folder, summary_line

    result = evaluate_folder(
        args.export, args.data, args.out, labels_csv=args.labels, batch_size=args.batch_size, tta=args.tta,
        overwrite=args.overwrite, progress=args.progress, mlflow_run_id=args.mlflow_run, tracking_uri=args.tracking_uri,
        name=args.name,
    )
    print(summary_line(result))
    logged = f" (logged to MLflow run {result['mlflow']['run_id']} under {result['mlflow']['artifact_path']}/)" if "mlflow" in result else ""
    print(f"evaluation written: {result['out_dir']}{logged}")
    return 0


def cmd_review_export(args: argparse.Namespace) -> int:
    from train.feedback import export_decisions

    r = export_decisions(args.db, args.photos, args.out, only=args.only, overwrite=args.overwrite)
    print(
        f"wrote {r['out']}: {r['positive']} positive (rejected), {r['negative']} negative (accepted), "
        f"{r['overturned']} of them overturn the model ({r['only']} decisions); add them to a dataset as "
        f"DATA/train/positive and DATA/train/negative"
    )
    return 0


def _add_export_folder(parser: argparse.ArgumentParser) -> None:
    """``--export``: the bundle a command reads or adds to."""
    parser.add_argument("--export", type=Path, default=Path("artifacts/export"), help="export bundle folder (default artifacts/export)")


def _add_bundle_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by predict and evaluate."""
    _add_export_folder(parser)
    a = parser.add_argument
    a("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    a(
        "--tta", action="store_true",
        help="test-time augmentation: average logits of original, mirrored and 1.5x-scale views; "
        "NOTE the bundle's threshold was chosen without TTA",
    )
    a("--overwrite", action="store_true", help="replace an existing output")
    a("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def cmd_demo_data(args: argparse.Namespace) -> int:
    from train.synth.demo import main as demo_main

    return demo_main(args.rest)


def get_args_parser() -> argparse.ArgumentParser:
    """Every command and option of ``python -m train`` in one place (long by nature: one
    statement per option, kept together so the CLI reads as one table)."""
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="fine-tune, log to MLflow, choose the threshold, export")
    add_train_arguments(p_train)
    p_train.set_defaults(func=cmd_train)
    p_tune = sub.add_parser(
        "tune", help="Optuna search; trials are nested MLflow runs; writes best_config.json",
        description="Optuna TPE search with median pruning over training options. Every trial runs the train "
        "command's training (checkpoints in memory, no export) on a shared feature cache and is a nested MLflow run. "
        "The study is persistent: rerun the same command to resume it. Run the same command on several machines "
        "with one --storage postgresql://... and a shared --tracking-uri to split the study's trials between them. Training flags set the options that are not "
        "searched. Trials are low-fidelity unless told otherwise: --epochs 2 --head-epochs 0 --train-fraction 0.5; "
        "retrain the best options at full budget.",
    )
    add_train_arguments(p_tune)
    t = p_tune.add_argument
    t("--n-trials", type=int, default=20, help="finished (complete or pruned) trials the study should have, all workers together (default 20)")
    t("--study-name", type=str, default="watermark-tune", help="Optuna study name (default watermark-tune)")
    t("--storage", type=str, help="Optuna RDB storage URL (default sqlite:///TUNE_DIR/optuna.db); postgresql://USER@HOST:PORT/DB lets several workers share the study (its password from PGPASSWORD or ~/.pgpass)")
    t("--tune-dir", type=str, help="folder for optuna.db and STUDY/{best_config.json,trials.csv,trials/} (default OUTPUT/tune)")
    t("--space", type=Path, help="JSON search space replacing the default, e.g. {\"lr\": {\"low\": 1e-4, \"high\": 1e-2, \"log\": true}}")
    t("--timeout", type=float, help="stop starting new trials after this many seconds")
    t("--startup-trials", type=int, default=6, help="random trials before TPE takes over (default 6)")
    t("--pruner-startup-trials", type=int, default=4, help="finished trials before the median pruner prunes (default 4)")
    t("--prune-from-epoch", type=int, help="first epoch after which a trial can be pruned (default --head-epochs + 1)")
    t("--heartbeat", type=int, default=30, help="trial heartbeat in seconds; a trial silent for 2x this is failed and retried once (default 30)")
    t("--no-baseline", dest="baseline", action="store_false", help="do not start a new study with the untuned default as trial 1")
    p_tune.set_defaults(func=cmd_tune)
    p_reg = sub.add_parser(
        "registry", help="model registry: list, show, promote, fetch, register",
        description="MLflow model registry of export bundles. Versions are MLflow pyfunc models (mlflow models serve "
        "-m models:/NAME@ALIAS); versions registered before that are bare bundles, which fetch and create_mar.sh "
        "--from-registry still take. Aliases: champion (served), challenger (newest candidate), "
        "previous (champion before the last promotion).",
    )
    p_reg.add_argument(
        "action", choices=("list", "show", "promote", "fetch", "register"),
        help="what to do (register: a run's export as a new version, e.g. to make an MLflow model of an old bare-bundle version)",
    )
    p_reg.add_argument("--run-id", type=str, help="training run whose export/ to register (register)")
    p_reg.add_argument("--name", type=str, default="watermark", help="registered model name (default watermark)")
    p_reg.add_argument("--version", type=str, help="version number (promote)")
    p_reg.add_argument("--alias", type=str, default="champion", help="alias to promote to / fetch (default champion)")
    p_reg.add_argument("--uri", type=str, help="models:/NAME@ALIAS or models:/NAME/VERSION (show, fetch; default models:/NAME@ALIAS)")
    p_reg.add_argument("--out", type=Path, help="folder to write the export bundle into (fetch)")
    p_reg.add_argument("--overwrite", action="store_true", help="replace --out if it exists (fetch)")
    p_reg.add_argument("--print-version", action="store_true", help="fetch: print only the version number (for scripts)")
    p_reg.add_argument("--output", type=str, help="training output folder whose embedded store to use (default artifacts)")
    p_reg.add_argument(
        "--tracking-uri", type=str,
        help="MLflow store (default: sqlite:///OUTPUT/mlflow/mlflow.db with --output, else $MLFLOW_TRACKING_URI, else artifacts/)",
    )
    p_reg.set_defaults(func=cmd_registry)
    p_export = sub.add_parser("export", help="export TorchScript + spec + threshold from a checkpoint")
    p_export.add_argument("--checkpoint", type=Path, default=Path("artifacts/checkpoints/best.pt"), help="training checkpoint (default artifacts/checkpoints/best.pt)")
    p_export.add_argument("--out", type=Path, default=Path("artifacts/export"), help="export folder, replaced atomically (default artifacts/export)")
    p_export.add_argument("--threshold", type=float, help="override the checkpoint's threshold (probability in (0, 1))")
    p_export.set_defaults(func=cmd_export)
    p_onnx = sub.add_parser(
        "export-onnx", help="add model.onnx to an export bundle (onnxruntime serving)",
        description="Convert the bundle's TorchScript model to ONNX (dynamic batch), check onnxruntime against "
        "TorchScript on random inputs, and write model.onnx into the bundle (nothing is written when parity fails).",
    )
    _add_export_folder(p_onnx)
    p_onnx.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |logit difference| (default 1e-4)")
    p_onnx.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p_onnx.set_defaults(func=cmd_export_onnx)
    p_int8 = sub.add_parser(
        "export-int8", help="add model.int8.onnx to an export bundle: quantised, written only when its verdicts hold",
        description="Quantise the bundle's ONNX model to int8 (static, QDQ; the head stays float), calibrated on "
        "validation images of both classes. The threshold is chosen again on the int8 model's validation scores by "
        "the bundle's rule. On the check set (held out: e.g. OUTPUT/reports/holdout.csv of the training run) F1 and "
        "ROC-AUC, each at its model's own threshold, may fall at most --max-drop below the fp32 model's; otherwise "
        "nothing is written. The check goes into model_info.json (key int8) either way. Folders hold positive/ and "
        "negative/, or any images listed in a --*-labels CSV (file,label).",
    )
    _add_export_folder(p_int8)
    p_int8.add_argument("--val", type=Path, required=True, help="validation images: calibration and the int8 threshold")
    p_int8.add_argument("--val-labels", type=Path, help="CSV file,label of --val (e.g. OUTPUT/reports/val.csv)")
    p_int8.add_argument("--check", type=Path, required=True, help="held-out images for the F1 / ROC-AUC check")
    p_int8.add_argument("--check-labels", type=Path, help="CSV file,label of --check (e.g. OUTPUT/reports/holdout.csv)")
    p_int8.add_argument("--calibration-images", type=int, default=64, help="validation images that calibrate, balanced (default 64)")
    p_int8.add_argument("--max-drop", type=float, default=0.005, help="largest allowed F1 and ROC-AUC drop vs fp32 (default 0.005)")
    p_int8.add_argument("--seed", type=int, default=0, help="seed of the calibration sample (default 0)")
    p_int8.set_defaults(func=cmd_export_int8)
    p_pt2 = sub.add_parser(
        "export-pt2", help="add model.pt2 (torch.export + AOTInductor) to an export bundle",
        description="Export the checkpoint's eager model with torch.export (dynamic batch 1..--max-batch), compile it "
        "ahead of time with AOTInductor into a .pt2 package, check it against the eager model and the bundle's "
        "TorchScript model, and write model.pt2 into the bundle (nothing is written when parity fails). Needs a C++ "
        "compiler; the package runs on CPUs with the instruction set of the machine that compiled it.",
    )
    _add_export_folder(p_pt2)
    p_pt2.add_argument("--checkpoint", type=Path, default=Path("artifacts/checkpoints/best.pt"), help="training checkpoint of the bundle (default artifacts/checkpoints/best.pt)")
    p_pt2.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |logit difference| (default 1e-4)")
    p_pt2.add_argument("--max-batch", type=int, default=64, help="largest batch the package accepts (default 64)")
    p_pt2.set_defaults(func=cmd_export_pt2)
    p_predict = sub.add_parser("predict", help="score an unlabelled image folder with an export bundle -> CSV")
    p_predict.add_argument("--input", type=Path, required=True, help="image folder, searched recursively (e.g. DATA/test)")
    p_predict.add_argument("--out", type=Path, required=True, help="CSV to write: file,probability,watermark,error")
    _add_bundle_arguments(p_predict)
    p_predict.set_defaults(func=cmd_predict)
    p_eval = sub.add_parser("evaluate", help="metrics, per-style breakdown, curves and worst errors on a labelled folder")
    p_eval.add_argument("--data", type=Path, required=True, help="folder with positive/ and/or negative/, or unlabelled with --labels")
    p_eval.add_argument("--labels", type=Path, help="CSV with columns file,label (1/0 or positive/negative; extra columns = style)")
    p_eval.add_argument("--out", type=Path, required=True, help="output folder, replaced atomically with --overwrite")
    p_eval.add_argument("--name", type=str, help="name of this evaluation (MLflow prefix eval_NAME_; default: the data folder's name)")
    _add_bundle_arguments(p_eval)
    p_eval.add_argument("--mlflow-run", type=str, help="also log metrics and files into this existing MLflow run")
    p_eval.add_argument(
        "--tracking-uri", type=str,
        help="MLflow store of --mlflow-run (default $MLFLOW_TRACKING_URI, else the training store recorded in the bundle)",
    )
    p_eval.set_defaults(func=cmd_evaluate)
    p_review = sub.add_parser(
        "review-export", help="moderators' decisions (review page) -> positive/ and negative/ training folders",
        description="Export the review page's decisions as training folders: OUT/positive/ (photos decided reject = "
        "watermark), OUT/negative/ (decided accept = clean), and OUT/decisions.csv (one row per photo: file, label, "
        "sha256, original name, model, version, probability, threshold, verdict, decision, overturned, reviewer, "
        "time). The latest decision of each photo counts, over all reviewers. Photos are named <sha256>.<ext>. OUT "
        "is built in a staging folder and swapped in whole; a missing photo or database is an error naming it.",
    )
    p_review.add_argument("--db", type=Path, default=Path("artifacts/review/decisions.sqlite"), help="decisions database of the review page (default artifacts/review/decisions.sqlite)")
    p_review.add_argument("--photos", type=Path, default=Path("artifacts/review/photos"), help="the review page's photo folder (default artifacts/review/photos)")
    p_review.add_argument("--out", type=Path, required=True, help="folder to write (refused when not empty, unless --overwrite)")
    p_review.add_argument("--only", choices=("all", "overturned"), default="all", help="all decided photos (default), or only those whose decision overturns the model's verdict")
    p_review.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p_review.set_defaults(func=cmd_review_export)
    p_demo = sub.add_parser("demo-data", help="build the demo dataset (see python -m train demo-data -h)", add_help=False)
    p_demo.add_argument("rest", nargs=argparse.REMAINDER)
    p_demo.set_defaults(func=cmd_demo_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if args.command != "demo-data":
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        # Options before the first positional (``demo-data -h``, ``demo-data --seed 1 OUT``) are not
        # taken by argparse.REMAINDER; they come back here, in order, ahead of the rest.
        args.rest = [*unknown, *args.rest]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
