"""`bestofl serve`: run the Best-of-L selector endpoint on Ray Serve until interrupted.

    bestofl serve model=runs/rm port=8000 [generator=PATH] [selector=rm_vote] [token=...]
"""
from __future__ import annotations

import signal
import sys
import time
from typing import Sequence

from ray import serve
from ray.serve.handle import DeploymentHandle

from bestofl import engine, models, preflight
from bestofl.config import ServeConfig
from bestofl.plan import command_main
from bestofl.ray_runtime import init_ray, serve_logging
from bestofl.serving import PROXY_CHECK_ENV, build_app

APP_NAME = "bestofl"


def run(cfg: ServeConfig, block: bool = True) -> DeploymentHandle:
    """Deploy the app (waits until healthy); with `block`, serve until SIGINT/SIGTERM, then
    delete it. Serve's HTTP options are cluster-wide: an already running Serve keeps its own."""
    check(cfg)
    preflight.require(cfg)  # fails in seconds where Ray would wait forever
    init_ray(cfg.ray)
    serve.start(http_options={"host": cfg.host, "port": cfg.port}, logging_config=serve_logging(),
                controller_options={"runtime_env": {"env_vars": PROXY_CHECK_ENV}})
    handle = serve.run(build_app(cfg), name=APP_NAME, route_prefix="/", logging_config=serve_logging())
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and cfg.token is None:
        print(f"bestofl serve: warning: listening on {cfg.host} without a token", file=sys.stderr)
    print(f"bestofl serve: http://{cfg.host}:{cfg.port}/select  (docs: /docs, selector "
          f"{cfg.selector}, generator {cfg.generator or 'none'})", flush=True)
    if not block:
        return handle

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    # A background process in a non-interactive shell ignores SIGINT; SIGTERM stops it too.
    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("bestofl serve: shutting down", flush=True)
        serve.delete(APP_NAME)
    return handle


def check(cfg: ServeConfig) -> None:
    """The models must be there before Ray and Serve start (else replicas fail in a loop)."""
    models.check_reward_model(cfg.model, cfg.trust_remote_code)
    if cfg.generator:
        models.check_language_model(cfg.generator)
        engine.check_kv_cache(engine.engine_args(cfg.generator, cfg.engine, cfg.generator_num_gpus))


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("serve", argv, run)


if __name__ == "__main__":
    sys.exit(main())
