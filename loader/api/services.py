"""What the routes share for the server's life: settings, who may call, the connection pool, the
settler and its threads, Idempotency-Keys and the marts refresher; started and stopped with the
application. Routes reach it through the typed dependencies in `loader.api.deps`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from loader.api.idempotency import IdempotencyKeys
from loader.api.pool import DatabasePool
from loader.api.refresh import MartsRefresher
from loader.api.throttle import FailureThrottle
from loader.api.tokens import Token, parse_tokens
from loader.observe.events import Observers
from loader.settings import Settings

if TYPE_CHECKING:  # the settler brings GX and dlt: imported when a server is made, not before
    from loader.api.metrics import ApiMetrics
    from loader.api.settlements import SettlementThreads
    from loader.flow.api_run import RequestSettler


@dataclass(frozen=True)
class Access:
    """Who may call: the known tokens, the failed-authentication throttle, and whether the
    server is open to anyone (`--insecure-dev` without tokens)."""

    tokens: list[Token]
    throttle: FailureThrottle
    insecure: bool = False


@dataclass(frozen=True)
class Services:
    settings: Settings
    url: str
    access: Access
    pool: DatabasePool
    settler: RequestSettler
    settlements: SettlementThreads
    idempotency: IdempotencyKeys
    refresher: MartsRefresher
    observers: Observers
    metrics: ApiMetrics | None = None  # with a metrics port: /metrics served from start to stop

    @classmethod
    def create(
        cls, settings: Settings, url: str, insecure: bool = False, host: str = "127.0.0.1"
    ) -> Services:
        """Everything for the database at `url` (`host`: the interface the server listens
        on, its metrics port's too); the settler forks its gate process here, before the
        server starts any thread."""
        from loader.api.settlements import SettlementThreads
        from loader.flow.api_run import RequestSettler
        from loader.observe.metrics import MetricsObserver
        from loader.observe.setup import Process, observers_for

        access = Access(
            parse_tokens(settings.api_tokens),
            FailureThrottle(settings.api_auth_failures, settings.api_auth_window_seconds),
            insecure,
        )
        pool = DatabasePool(url, settings)
        observers = observers_for(settings, Process.SERVE)
        observer = MetricsObserver.in_hub(observers)
        metrics = None
        if observer is not None:
            from loader.api.metrics import ApiMetrics

            metrics = ApiMetrics(observer, host, settings.metrics_port)
        settler = RequestSettler(settings, url, observers)
        refresher = MartsRefresher(
            url,
            {"LOADER_STATE_DIR": str(settings.state_path)},
            after_build=settler.build_docs,
            built=metrics.marts_refreshed if metrics else lambda seconds, success: None,
        )
        return cls(
            settings,
            url,
            access,
            pool,
            settler,
            SettlementThreads(),
            IdempotencyKeys(pool),
            refresher,
            observers,
            metrics,
        )

    def start(self) -> None:
        self.pool.open()
        self.settler.start()
        self.refresher.start()
        if self.metrics is not None:
            self.metrics.start(self.access)

    def stop(self) -> None:
        """Blocks until settlements still running (a 504 does not stop them) have finished and
        stored their answers: call it off the event loop."""
        self.settlements.shutdown()
        self.settler.stop()
        self.refresher.stop()
        if self.metrics is not None:
            self.metrics.stop()
        self.pool.close()
        self.observers.close()
