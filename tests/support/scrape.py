"""Scraping a Prometheus endpoint over HTTP, as Prometheus does, into {(sample name, labels): value}."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, timeout: float = 10.0) -> Samples:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0.0 when the endpoint does not show it (a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def has(samples: Samples, name: str, **labels: str) -> bool:
    return (name, frozenset(labels.items())) in samples


def metric_names(registries: Iterable[CollectorRegistry]) -> set[str]:
    """Every sample name the registries can expose, also of labelled metrics with no sample yet
    (``x`` -> ``x_total`` for counters, ``x_bucket``/``x_count``/``x_sum`` for histograms)."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "summary": ("_count", "_sum"),
    }
    names: set[str] = set()
    for registry in registries:
        for family in registry.collect():
            names.add(family.name)
            names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
            names.update(sample.name for sample in family.samples)
    return names


def scrape_until(url: str, holds: Callable[[Samples], bool], timeout: float = 10.0) -> Samples:
    """Scrape until `holds(samples)`; those samples (AssertionError after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if holds(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"the scrape of {url} did not show what was awaited within {timeout} s")
        time.sleep(0.05)
