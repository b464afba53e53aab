"""The ``hidra-ng`` command line (SPEC §5): the only place that parses argv or sets up logging.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or config. Errors are one
sentence on stderr; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from hidra_ng import config as cfg
from hidra_ng.errors import ConfigError, HidraError

app = typer.Typer(
    name="hidra-ng",
    help="Move detector frames to the data center without losing any, and read them back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}

DEFAULT_API = "tcp://localhost:50101"
DEFAULT_PUBLISH = "tcp://localhost:50102"

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML config file")]
ApiOpt = Annotated[str, typer.Option("--api", help="receiver api endpoint")]
KeysOpt = Annotated[str | None, typer.Option("--keys-dir", help="this client's CurveZMQ key pair")]
ServerKeyOpt = Annotated[
    str | None, typer.Option("--server-key-dir", help="the receiver's public key")
]
ShardsOpt = Annotated[
    Path | None,
    typer.Option("--shards", help="shard map (TOML): read from every receiver, not --api"),
]


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="tracebacks and debug logs")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="info logs")] = False,
) -> None:
    _state["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        stream=sys.stderr, level=level, format="%(levelname)s %(name)s: %(message)s"
    )


# ------------------------------------------------------------------ daemons


def _config_command(section: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Make a daemon command from ``body(settings, **own_options)``.

    The command gets ``--config`` and one option per setting of the ``section``
    config struct, named (:func:`config.flag_name`), typed and described (the
    field's ``Meta(description=...)`` and its environment variable) by that
    struct; they are loaded with :func:`config.load` (flag > environment > file >
    default) and passed to ``body`` as ``settings``. A setting is declared once,
    in config.py, and reaches the command line from there.
    """
    cls = cfg.config_class(section)
    keys = list(cls.__struct_fields__)

    def decorate(body: Callable[..., None]) -> Callable[..., None]:
        own = inspect.signature(body, eval_str=True).parameters
        params = [
            inspect.Parameter(
                "config", inspect.Parameter.KEYWORD_ONLY, annotation=ConfigOpt, default=None
            )
        ]
        for key in keys:
            kind = cfg.field_type(section, key)
            env = "" if key == "sources" else f" (env {cfg.env_name(section, key)})"
            option = typer.Option(cfg.flag_name(key), help=cfg.description(section, key) + env)
            params.append(
                inspect.Parameter(
                    key,
                    inspect.Parameter.KEYWORD_ONLY,
                    annotation=Annotated[kind | None, option],
                    default=None,
                )
            )
        params += [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for n, p in own.items()
            if n != "settings"
        ]

        def command(**options: Any) -> None:
            path = options.pop("config")
            flags = {key: options.pop(key) for key in keys}
            flags = {k: v for k, v in flags.items() if v is not None and v != []}  # not given
            settings = cfg.load(section, path, flags)
            logging.getLogger("hidra_ng").setLevel(min(logging.INFO, logging.root.level))
            body(settings, **options)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__, command.__qualname__ = body.__name__, body.__qualname__
        command.__doc__, command.__module__ = body.__doc__, body.__module__
        return command

    return decorate


@app.command()
@_config_command("receiver")
def receiver(
    settings: cfg.ReceiverConfig,
    ready_file: Annotated[
        Path | None,
        typer.Option(
            help="once bound, write the endpoints and the metrics port here as JSON (e.g. for"
            " tcp://...:* and metrics_port -1)"
        ),
    ] = None,
) -> None:
    """Run the receiver: store frames in LMDB, acknowledge, publish, serve."""
    from hidra_ng import heap

    heap.keep_frame_buffers()

    def build() -> Any:
        from hidra_ng.receiver.daemon import Receiver

        return Receiver(settings)

    _serve(build, ready_file)


def _serve(build: Callable[[], Any], ready_file: Path | None) -> None:
    """Build a daemon and run it until stopped; exits with its code.

    A SIGTERM from the start of ``build`` on (importing the daemon's module
    included) is a clean stop. The ready file gets the daemon's metrics port and
    its bound ``endpoints``, if it has any.
    """
    from hidra_ng import service

    with service.stop_signals() as stop:  # a SIGTERM from here on: a clean stop
        from hidra_ng.metrics import served_port

        daemon = build()
        if ready_file is not None:
            bound = {**getattr(daemon, "endpoints", {})}
            bound["metrics_port"] = served_port(daemon.metrics.registry)
            _write_ready_file(ready_file, bound)
        code = service.run(daemon, stop_event=stop)
    raise typer.Exit(code)


def _write_ready_file(path: Path, endpoints: dict[str, Any]) -> None:
    """The bound endpoints as JSON, renamed into place: a reader never sees half of it."""
    import json
    import os

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(endpoints))
    os.replace(tmp, path)


@app.command()
@_config_command("sender")
def sender(
    settings: cfg.SenderConfig,
    exit_when_done: Annotated[
        bool, typer.Option(help="exit once every source is done and everything is acked")
    ] = False,
    ready_file: Annotated[
        Path | None,
        typer.Option(
            help="once started and its sources bound, write the metrics port and the"
            " sources' bound endpoints here as JSON"
        ),
    ] = None,
) -> None:
    """Run the sender daemon: spool frames from sources and push them to the receiver."""
    from hidra_ng import heap, service
    from hidra_ng.sender import sources
    from hidra_ng.sender.daemon import SenderDaemon

    heap.keep_frame_buffers()

    parsed = [sources.parse(uri) for uri in settings.sources]
    if not parsed:
        raise ConfigError("no sources given; add --source URI or [[sender.sources]] in the config")
    with service.stop_signals() as stop:  # a SIGTERM from here on: a clean stop
        daemon = SenderDaemon(settings, parsed)
        if ready_file is not None:
            start = daemon.start

            def start_and_report() -> None:
                start()
                _write_ready_file(ready_file, daemon.bound())

            daemon.start = start_and_report  # type: ignore[method-assign]

        def done() -> bool:
            return exit_when_done and daemon.sources_done() and daemon.producer.spool_messages == 0

        code = service.run(daemon, should_stop=done, stop_event=stop)
    raise typer.Exit(code)


#: --ready-file of the writer and the bridge: what they bind is their metrics port
METRICS_READY_HELP = "once started, write the metrics port here as JSON (e.g. for metrics_port -1)"


@app.command()
@_config_command("writer")
def write(
    settings: cfg.WriterConfig,
    ready_file: Annotated[Path | None, typer.Option(help=METRICS_READY_HELP)] = None,
) -> None:
    """Write streams as files for legacy tools (NXmx, HDF5, TIFF) as frames arrive."""

    def build() -> Any:
        from hidra_ng.writer.daemon import WriterDaemon

        return WriterDaemon(settings)

    _serve(build, ready_file)


@app.command()
@_config_command("bridge")
def bridge(
    settings: cfg.BridgeConfig,
    ready_file: Annotated[Path | None, typer.Option(help=METRICS_READY_HELP)] = None,
) -> None:
    """Republish every durable frame of chosen streams into RabbitMQ streams (SPEC §13)."""

    def build() -> Any:
        from hidra_ng.bridge import Bridge

        return Bridge(settings)

    _serve(build, ready_file)


@app.command()
def demo(
    frames: Annotated[int, typer.Option(help="frames to send")] = 100,
    keep: Annotated[bool, typer.Option(help="keep the data directory")] = False,
) -> None:
    """Start a receiver and a simulated detector, stream, read back, print a summary."""
    from hidra_ng.demo import run_demo

    if not run_demo(frames=frames, keep=keep, say=typer.echo):
        raise typer.Exit(1)


@app.command("check-config")
def check_config(path: Annotated[Path, typer.Argument(help="TOML config file")]) -> None:
    """Validate a config file (or a shard map) and print the effective settings."""
    from hidra_ng import shards as shard_maps

    if _is_shard_map(path):
        shard_map = shard_maps.load_shard_map(path)
        typer.echo(f"# {path}: valid shard map of {len(shard_map.shards)} receivers:")
        typer.echo(shard_maps.to_toml(shard_map), nl=False)
        return
    section, settings = cfg.check_file(path)
    if section == "sender":
        from hidra_ng.sender import sources

        for uri in settings.sources:
            sources.parse(uri)
    if section in ("sender", "writer", "view") and settings.shards:
        shard_maps.load_shard_map(settings.shards)
    typer.echo(f"# {path}: valid {section} config; effective settings:")
    typer.echo(cfg.to_toml(section, settings), nl=False)


def _is_shard_map(path: Path) -> bool:
    """A TOML file of ``[[shard]]`` tables (unreadable files: left to check_file to name)."""
    import tomllib

    try:
        with path.open("rb") as f:
            return "shard" in tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False


# ----------------------------------------------------------------- readers


@app.command()
def streams(
    api: ApiOpt = DEFAULT_API,
    keys_dir: KeysOpt = None,
    server_key_dir: ServerKeyOpt = None,
    shards: ShardsOpt = None,
) -> None:
    """List the receiver's streams (with --shards: every receiver's, with a receiver column)."""
    with _consumer(api, keys_dir, server_key_dir, shards) as c:
        if shards is None:
            _print_streams(c.streams())
            return
        answered, down = c.streams_answered()
        _print_streams([info for _, info in answered], [name for name, _ in answered])
        for name, err in down.items():
            typer.echo(f"hidra-ng: receiver {name} did not answer: {err}", err=True)
        if down:
            raise typer.Exit(1)


@app.command()
def info(
    stream: str,
    api: ApiOpt = DEFAULT_API,
    keys_dir: KeysOpt = None,
    server_key_dir: ServerKeyOpt = None,
    shards: ShardsOpt = None,
) -> None:
    """Show one stream."""
    with _consumer(api, keys_dir, server_key_dir, shards) as c:
        if shards is None:
            _print_streams([c.info(stream)])
        else:
            _print_streams([c.info(stream)], [c.shard(stream).name])


def _consumer(api: str, keys_dir: str | None, server_key_dir: str | None, shards=None):
    from hidra_ng.client.consumer import Consumer

    if shards is not None and api != DEFAULT_API:
        raise ConfigError(
            f"--shards {shards} and --api {api} are both given; the shard map names every"
            " receiver's api endpoint, so give only one of them"
        )
    return Consumer(api, keys_dir=keys_dir, server_key_dir=server_key_dir, shards=shards)


@app.command()
def get(
    stream: str,
    index: int,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write .npy or raw")] = None,
    timeout: Annotated[float, typer.Option(help="wait this long for a future index, s")] = 5.0,
    api: ApiOpt = DEFAULT_API,
    keys_dir: KeysOpt = None,
    server_key_dir: ServerKeyOpt = None,
    shards: ShardsOpt = None,
) -> None:
    """Fetch one frame; print its description, optionally save its data."""
    import numpy as np

    with _consumer(api, keys_dir, server_key_dir, shards) as c:
        frame = c.get(stream, index, timeout=timeout)
    data = frame.data
    what = (
        f"array {data.dtype} {'x'.join(map(str, data.shape))}"
        if isinstance(data, np.ndarray)
        else "no data"
        if data is None
        else f"{len(data)} bytes"
    )
    typer.echo(f"{frame.stream} #{frame.index}: {what}, sender {frame.sender} seq {frame.seq}")
    typer.echo(f"meta: {frame.meta}")
    if output is not None:
        if isinstance(data, np.ndarray):
            np.save(output, data)
        else:
            output.write_bytes(b"" if data is None else data)
        typer.echo(f"written to {output}")


@app.command()
def query(
    stream: str,
    expr: Annotated[str, typer.Argument(help='filter, e.g. "meta.exposure_s > 0.005"')],
    limit: Annotated[
        int, typer.Option(min=0, help="print at most this many matches, 0: all")
    ] = 10_000,
    start: Annotated[int, typer.Option(min=0, help="examine records from this index on")] = 0,
    scan_limit: Annotated[
        int, typer.Option(min=0, help="records the receiver examines per page, 0: its default")
    ] = 0,
    api: ApiOpt = DEFAULT_API,
    keys_dir: KeysOpt = None,
    server_key_dir: ServerKeyOpt = None,
    shards: ShardsOpt = None,
) -> None:
    """Print the frames of STREAM whose metadata match EXPR, one line each, in index order.

    The receiver answers in pages; this goes on from page to page, printing as they come.
    """
    from hidra_ng.errors import QueryError
    from hidra_ng.receiver.query import compile_query

    try:
        compile_query(expr)  # a syntax error is bad usage: said before any connection
    except QueryError as err:
        raise typer.BadParameter(str(err), param_hint="EXPR") from None
    shown = 0
    with _consumer(api, keys_dir, server_key_dir, shards) as c:
        for frame in c.iter_query(stream, expr, limit=limit, start=start, scan_limit=scan_limit):
            typer.echo(f"{frame.index:>8}  {_short_meta(frame.meta, width=100)}")
            shown += 1
    typer.echo(f"{shown} match{'es' if shown != 1 else ''}", err=True)


@app.command()
def tail(
    stream: str,
    publish: Annotated[str, typer.Option("--publish", help="receiver publish endpoint")] = (
        DEFAULT_PUBLISH
    ),
    api: Annotated[str | None, typer.Option("--api", help="receiver api endpoint")] = None,
    count: Annotated[int, typer.Option(help="stop after this many frames, 0: never")] = 0,
    keys_dir: KeysOpt = None,
    server_key_dir: ServerKeyOpt = None,
    shards: ShardsOpt = None,
) -> None:
    """Print live frames of STREAM as lines until Ctrl-C."""
    import time

    from hidra_ng.client.subscriber import Subscriber

    shown = 0
    window: list[float] = []
    try:
        with Subscriber(
            publish,
            [stream],
            api=api,
            keys_dir=keys_dir,
            server_key_dir=server_key_dir,
            shards=shards,
        ) as sub:
            for frame in sub:
                now = time.monotonic()
                window = [t for t in window if now - t < 1.0] + [now]
                typer.echo(
                    f"{frame.index:>8}  {_describe(frame):<22} {len(window):>5} Hz"
                    f"  skipped {sub.skipped:<5} {_short_meta(frame.meta)}"
                )
                shown += 1
                if count and shown >= count:
                    return
    except KeyboardInterrupt:
        return


@app.command()
def export(
    stream: str,
    out: Annotated[Path, typer.Argument(help="the HDF5 file to write")],
    start: Annotated[int, typer.Option(help="first index (default: the first stored)")] = 0,
    stop: Annotated[int | None, typer.Option(help="end index, exclusive (default: all)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing file")] = False,
    api: ApiOpt = DEFAULT_API,
    keys_dir: KeysOpt = None,
    server_key_dir: ServerKeyOpt = None,
    shards: ShardsOpt = None,
) -> None:
    """Export a stream to a NeXus-style HDF5 file, with a progress bar."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from hidra_ng.client.export import export_hdf5

    with (
        _consumer(api, keys_dir, server_key_dir, shards) as c,
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as bar,
    ):
        task = bar.add_task(f"export {stream}", total=None)

        def step(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = export_hdf5(c, stream, out, start, stop, step, overwrite=overwrite)
    shape = "x".join(str(n) for n in result.frame_shape) or "-"
    typer.echo(
        f"{result.path}: {result.frames} frames ({shape} {result.dtype or '-'},"
        f" {result.compression}) and {result.metadata_messages} metadata messages from"
        f" {stream} indices {result.start}..{result.stop - 1}, {result.bytes} bytes in"
        f" {result.seconds:.1f} s"
    )


@app.command()
@_config_command("view")
def view(settings: cfg.ViewConfig) -> None:
    """Serve the live view: streams and their newest frames in a browser, until Ctrl-C."""
    from hidra_ng.view import ViewServer

    server = ViewServer(settings)
    server.link.check_keys()

    def ready(srv: ViewServer) -> None:
        hint = " (add ?token=YOUR_TOKEN)" if settings.token else ""
        typer.echo(
            f"hidra-ng view: open {srv.url}{hint}; receiver api {srv.link.api},"
            f" publish {srv.link.publish}; Ctrl-C to stop"
        )

    server.run(ready)


@app.command()
def keygen(
    directory: Annotated[Path, typer.Argument(help="where to write the key pair")],
) -> None:
    """Write a CurveZMQ key pair (public .key, secret .key_secret) into DIRECTORY."""
    from hidra_ng.security import keygen as make_keys

    public, secret = make_keys(directory)
    typer.echo(f"public key: {public}\nsecret key: {secret} (owner only; keep it secret)")


def _describe(frame) -> str:
    import numpy as np

    data = frame.data
    if isinstance(data, np.ndarray):
        return f"{'x'.join(map(str, data.shape))} {data.dtype}"
    return "no data" if data is None else f"{len(data)} bytes"


def _short_meta(meta: dict, width: int = 60) -> str:
    text = ", ".join(f"{k}={v}" for k, v in meta.items())
    return text if len(text) <= width else text[: width - 3] + "..."


def _print_streams(infos, receivers: list[str] | None = None) -> None:
    """A table of streams; with ``receivers`` (one per stream) a receiver column first."""
    rows: list[tuple[str, ...]] = [("stream", "first", "last", "count", "bytes", "finished")]
    for s in infos:
        last = "-" if s.last is None else str(s.last)
        rows.append((s.name, str(s.first), last, str(s.count), str(s.bytes), str(s.finished)))
    if receivers is not None:
        order = sorted(range(len(receivers)), key=lambda i: (receivers[i], rows[i + 1][0]))
        rows = [("receiver", *rows[0])] + [(receivers[i], *rows[i + 1]) for i in order]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# --------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one clear sentence per error, exit codes per SPEC §5.

    typer itself reports usage errors (exit 2); our errors are caught here.
    """
    try:
        app(args=argv)
        return 0
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 0 if done.code is None else 1
    except HidraError as err:
        if _state["debug"]:
            raise
        print(f"hidra-ng: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    except OSError as err:
        if _state["debug"]:
            raise
        print(f"hidra-ng: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
