"""OpenTelemetry traces and metrics for every aiotlink client in the process.

::

    import aiotlink.otel

    aiotlink.otel.instrument()  # the global tracer and meter providers

Spans are children of the caller's current span: one per API call with a child per
HTTP attempt (HTTP client semantic conventions), one per wait, watch and run, one per
result download, one per webhook verification and nudge; README.md, "Traces and
metrics", draws the tree. Needs the ``otel`` extra (``opentelemetry-api`` only):
``pip install "aiotlink[otel]"``.
"""

from __future__ import annotations

try:
    import opentelemetry.metrics
    import opentelemetry.trace
except ImportError:  # raised below, outside the handler: nothing rides along
    _missing = True
else:
    _missing = False
if _missing:
    raise ImportError('aiotlink.otel needs OpenTelemetry: pip install "aiotlink[otel]"')

from .. import _instrument
from ._hooks import OpenTelemetryHooks

__all__ = ["instrument", "uninstrument"]


def instrument(
    tracer_provider: opentelemetry.trace.TracerProvider | None = None,
    meter_provider: opentelemetry.metrics.MeterProvider | None = None,
) -> None:
    """Turn on spans and metrics for every client of this process, now and later made.

    ``None`` stands for the global provider (``opentelemetry.trace.set_tracer_provider``
    and ``opentelemetry.metrics.set_meter_provider``), looked up when a span or
    measurement is made. Calling it again replaces the providers; the spans of waits
    in progress end then, as by :func:`uninstrument`.
    """
    uninstrument()
    _instrument.current = OpenTelemetryHooks(tracer_provider, meter_provider)


def uninstrument() -> None:
    """Turn spans and metrics off again: from now on the client costs nothing for them.

    The spans of waits in progress end at once, with no outcome: their end will not
    be seen.
    """
    hooks, _instrument.current = _instrument.current, None
    if isinstance(hooks, OpenTelemetryHooks):
        hooks.close()
