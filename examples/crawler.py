"""Crawl every page of a site listed in its sitemap, at most 8 requests at once.

Fetching the pages one after another is slow; starting a task for every URL at once
hammers the server and keeps every page in memory until the indexer gets to it.
``amap()`` runs at most ``LIMIT`` requests at once, reads the sitemap only as fast as
the indexer takes the pages (never more than ``2 * LIMIT`` URLs ahead), and hands the
pages out in sitemap order. A page that is gone comes back as an exception value
(``return_exceptions=True``) instead of ending the crawl.

The second crawl stops at the first page that mentions a word: leaving the loop cancels
the requests still in flight and closes the sitemap.

The "network" is an in-process fake whose requests take a few milliseconds. Run it with
``python examples/crawler.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import anyio

from anyio_keyq import amap

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

SITE = "https://docs.example"
PAGES = 120
LIMIT = 8


class Page(NamedTuple):
    url: str
    title: str
    text: str


class PageGone(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(f"404 Not Found: {url}")
        self.url = url


class FakeSite:
    """Serves the pages, and records how the crawler treats it."""

    def __init__(self) -> None:
        self.listed = 0  # URLs read from the sitemap so far
        self.in_flight = 0
        self.peak_in_flight = 0
        self.cancelled = 0
        self.sitemap_closed = False

    async def sitemap(self) -> AsyncIterator[str]:
        """The URLs of the site, read page by page from a (fake) sitemap API."""
        try:
            for n in range(PAGES):
                self.listed += 1
                yield f"{SITE}/page/{n}"
        finally:
            self.sitemap_closed = True

    async def fetch(self, url: str) -> Page:
        n = int(url.rsplit("/", 1)[1])
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await anyio.sleep(0.001 * (1 + n % 3))  # some pages are slower than others
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        if n % 50 == 49:
            raise PageGone(url)
        return Page(url, f"Page {n}", "deadlines and timeouts" if n == 30 else "lorem ipsum")


async def crawl_everything() -> None:
    site = FakeSite()
    titles: list[str] = []
    gone: list[str] = []
    async with amap(site.fetch, site.sitemap(), limit=LIMIT, return_exceptions=True) as pages:
        async for page in pages:
            if isinstance(page, PageGone):
                gone.append(page.url)
            elif isinstance(page, Page):
                titles.append(page.title)
            else:
                raise page  # an unexpected failure of the crawler itself
            # Backpressure: the sitemap is read at most 2 * LIMIT URLs ahead of us.
            assert site.listed - (len(titles) + len(gone)) <= 2 * LIMIT

    print(f"indexed {len(titles)} pages, {len(gone)} gone: {', '.join(gone)}")
    print(f"at most {site.peak_in_flight} requests at once")
    assert len(titles) + len(gone) == PAGES
    assert gone == [f"{SITE}/page/49", f"{SITE}/page/99"]
    # in sitemap order, although the requests finished out of order
    assert titles == [f"Page {n}" for n in range(PAGES) if n % 50 != 49]
    assert site.peak_in_flight <= LIMIT


async def find_first_mention(word: str) -> None:
    site = FakeSite()
    found = None
    async with amap(site.fetch, site.sitemap(), limit=LIMIT) as pages:
        async for page in pages:
            if word in page.text:
                found = page.url
                break  # cancels the requests still in flight, closes the sitemap

    print(f"{word!r} first appears on {found}; {site.cancelled} requests cancelled")
    assert found == f"{SITE}/page/30"
    assert site.in_flight == 0  # nothing left running after the block
    assert site.sitemap_closed
    assert site.listed <= 31 + 2 * LIMIT


async def main() -> None:
    await crawl_everything()
    await find_first_mention("deadline")


if __name__ == "__main__":
    anyio.run(main)
