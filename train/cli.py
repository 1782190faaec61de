"""One entry point: ``python -m train <command>``.

Commands:
    demo-data  build the built-in demo dataset from photos that packages ship
    train      fine-tune Inception V3 on a positive/negative folder, log to MLflow, export
    export     re-export TorchScript + spec + threshold from a training checkpoint
    predict    score an unlabelled image folder with an export bundle -> CSV
    evaluate   metrics, per-style breakdown, curves and worst-error sheets on a labelled folder
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from train.metrics import THRESHOLD_RULES
from train.model import BLOCKS, HEAD, POOLS

log = logging.getLogger("train")


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r}: allowed are true/false")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Training options; every default is None so a --config file can supply it."""
    from train.train import SELECT_METRICS, TrainConfig

    d = {f.name: f.default for f in fields(TrainConfig)}
    a = parser.add_argument
    a("--data", type=str, help="folder with train/{positive,negative} (and optional val/) or {positive,negative}")
    a("--config", type=Path, help="JSON file of training options (e.g. tuned parameters); flags override it")
    a("--output", type=str, help=f"output folder: checkpoints, export, reports, cache, MLflow store (default {d['output']})")
    a("--weights", type=str, help=f"fid-inception | imagenet | none | PATH to a checkpoint (default {d['weights']})")
    a("--image-size", type=int, help=f"input side in pixels, part of the preprocessing spec (default {d['image_size']})")
    a("--resize", choices=("squash", "letterbox"), help=f"resize policy (default {d['resize']})")
    a("--pool", choices=POOLS, help=f"global pooling of the last feature map (default {d['pool']})")
    a("--dropout", type=float, help=f"dropout before the fc layer (default {d['dropout']})")
    a("--epochs", type=int, help=f"total epochs (default {d['epochs']})")
    a("--head-epochs", type=int, help=f"first epochs that train the heads only (default {d['head_epochs']})")
    a("--unfreeze-from", choices=(HEAD, *BLOCKS), help=f"first block trained after the head stage (default {d['unfreeze_from']})")
    a("--batch-size", type=int, help=f"batch size (default {d['batch_size']})")
    a("--lr", type=float, help=f"learning rate of the heads (default {d['lr']})")
    a("--backbone-lr-mult", type=float, help=f"backbone lr = lr x this (default {d['backbone_lr_mult']})")
    a("--weight-decay", type=float, help=f"AdamW weight decay (default {d['weight_decay']})")
    a("--pos-weight", type=str, help="positive-class loss weight: auto (= negatives/positives) or a number")
    a("--aux-weight", type=float, help=f"weight of the aux-head loss (default {d['aux_weight']})")
    a("--augment", type=_bool, help=f"add horizontally flipped views (default {d['augment']})")
    a("--overlay-negatives", type=int, help="render this many watermarked copies of every clean training photo (default 0)")
    a("--val-fraction", type=float, help=f"validation share when there is no val/ folder (default {d['val_fraction']})")
    a("--seed", type=int, help=f"random seed (default {d['seed']})")
    a("--patience", type=int, help=f"early stop after this many epochs without improvement (default {d['patience']})")
    a("--select-metric", choices=SELECT_METRICS, help=f"validation metric for the best checkpoint (default {d['select_metric']})")
    a("--threshold-rule", choices=THRESHOLD_RULES, help=f"how the decision threshold is chosen on validation (default {d['threshold_rule']})")
    a("--threshold-target", type=float, help="target FPR (default 0.02) or precision (default 0.95) of that rule")
    a("--cache", type=_bool, help="cache features of the frozen lower blocks on disk (default true)")
    a("--cache-dir", type=str, help="feature cache folder (default OUTPUT/cache)")
    a("--tracking-uri", type=str, help="MLflow tracking URI (default: embedded SQLite store in OUTPUT/mlflow, no server)")
    a("--experiment", type=str, help=f"MLflow experiment name (default {d['experiment']})")
    a("--run-name", type=str, help="MLflow run name")
    a("--resume", action="store_true", default=None, help="continue from OUTPUT/checkpoints/last.pt")
    a("--no-progress", dest="progress", action="store_false", default=None, help="hide progress bars")
    a("--no-export", dest="export", action="store_false", default=None, help="skip the TorchScript export")


def config_from_args(args: argparse.Namespace):
    from train.train import TrainConfig, load_config_file

    values = load_config_file(args.config) if args.config else {}
    names = {f.name for f in fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    if "data" not in values:
        raise ValueError("--data is required (or a --config file with a 'data' entry)")
    return TrainConfig.from_dict(values)


def cmd_train(args: argparse.Namespace) -> int:
    from train.train import train

    result = train(config_from_args(args))
    m = result.val_metrics
    print(
        f"best {result.select_metric} {result.best_score:.4f} after {result.epochs_run} epochs | "
        f"val F1 {m['f1']:.3f} precision {m['precision']:.3f} recall {m['recall']:.3f} FPR {m['fpr']:.3f} "
        f"at threshold {result.threshold['threshold']:.4f} ({result.threshold['rule']})"
    )
    if result.export_dir:
        print(f"exported: {result.export_dir}  (next: scripts/create_mar.sh --export-dir {result.export_dir})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from handler.preprocess import PreprocessSpec
    from train.export import export_model
    from train.model import WatermarkNet

    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: not found; train first (python -m train train)")
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "model" not in state or "spec" not in state:
        raise ValueError(f"--checkpoint {args.checkpoint}: not a training checkpoint of this project")
    if "threshold" not in state and args.threshold is None:
        raise ValueError(f"--checkpoint {args.checkpoint}: has no chosen threshold; pass --threshold P (0 < P < 1)")
    threshold = {"threshold": args.threshold, "rule": "manual"} if args.threshold is not None else state["threshold"]
    config = state["config"]
    model = WatermarkNet(pool=config["pool"], dropout=config["dropout"])
    model.load_state_dict(state["model"])
    spec = PreprocessSpec.from_dict(state["spec"])
    info = {"model_name": "watermark", "weights": config["weights"], "source_checkpoint": str(args.checkpoint), "config": config}
    result = export_model(model, spec, threshold, args.out, info=info)
    print(f"exported {args.out} (parity max |diff| {result['max_abs_diff']:.2e})")
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


def _add_bundle_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by predict and evaluate."""
    a = parser.add_argument
    a("--export", type=Path, default=Path("artifacts/export"), help="export bundle folder (default artifacts/export)")
    a("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    a(
        "--tta", action="store_true",
        help="test-time augmentation: average logits of original, mirrored and 1.5x-scale views; "
        "NOTE the bundle's threshold was chosen without TTA",
    )
    a("--overwrite", action="store_true", help="replace an existing output")
    a("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def cmd_demo_data(args: argparse.Namespace) -> int:
    from train.demo_data import main as demo_main

    return demo_main(args.rest)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="fine-tune, log to MLflow, choose the threshold, export")
    add_train_arguments(p_train)
    p_train.set_defaults(func=cmd_train)
    p_export = sub.add_parser("export", help="export TorchScript + spec + threshold from a checkpoint")
    p_export.add_argument("--checkpoint", type=Path, default=Path("artifacts/checkpoints/best.pt"), help="training checkpoint (default artifacts/checkpoints/best.pt)")
    p_export.add_argument("--out", type=Path, default=Path("artifacts/export"), help="export folder, replaced atomically (default artifacts/export)")
    p_export.add_argument("--threshold", type=float, help="override the checkpoint's threshold (probability in (0, 1))")
    p_export.set_defaults(func=cmd_export)
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
    p_demo = sub.add_parser("demo-data", help="build the demo dataset (see python -m train demo-data -h)", add_help=False)
    p_demo.add_argument("rest", nargs=argparse.REMAINDER)
    p_demo.set_defaults(func=cmd_demo_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
