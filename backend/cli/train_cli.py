"""``labelloop train --project ID``: sync, featurize what is missing, train, print the metrics."""

from __future__ import annotations

import argparse
import json

from backend.settings import Settings


def cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    from backend.cli.common import CliError, label_studio_client
    from backend.loop.fit import train_project
    from backend.loop.sync import reconcile
    from backend.loop.targets import NotEnoughLabels
    from backend.store.db import Store

    store = Store(settings.store.url)
    store.upgrade()
    with label_studio_client(settings) as ls:
        report = reconcile(store, ls, args.project)
        print(report.summary())
        resolver = ls.image_resolver(settings.images)
        try:
            outcome = train_project(settings, store, args.project, resolver.fetch)
        except NotEnoughLabels as exc:
            raise CliError(str(exc)) from None
        finally:
            store.dispose()
    metrics = outcome.model.metrics
    print(
        f"model {outcome.version}: {outcome.n_labels} labels, {outcome.n_failed} images failed, "
        f"featurize {outcome.featurize_seconds:.1f} s, train {outcome.train_seconds:.1f} s\n"
        f"checkpoint {outcome.path}"
    )
    print(json.dumps(metrics, indent=2, default=float))
    return 0
