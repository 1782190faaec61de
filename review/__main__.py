"""``python -m review``: serve the review page (Flask's threaded server; loopback by default)."""

from __future__ import annotations

import sys

from review.config import config_from_args, get_args_parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from review.app import create_app

    app = create_app(config)
    print(f"review page: http://{args.host}:{args.port}/  (Ctrl-C stops it; TorchServe {config.inference_url}, "
          f"model {config.model}; decisions {config.db}, photos {config.photos})", flush=True)
    app.run(host=args.host, port=args.port, threaded=True, debug=False, use_reloader=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
