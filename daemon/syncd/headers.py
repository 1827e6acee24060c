"""Object headers: the Content-Type guessed from a file's name and the folder's ``headers`` rules.

The store gets a resolved ``{header: value}`` mapping per object; which rule applies is
decided here, once per upload, from the path relative to the folder root.

``content_type: auto`` guesses the way ``aws s3 sync`` does: ``mimetypes.guess_type(name)[0]``
(Python's table plus the system's ``/etc/mime.types``). Like aws-cli it keeps only the type, never
the encoding half of the guess: ``x.tar.gz`` is ``application/x-tar`` with no ``Content-Encoding:
gzip``, which would make browsers and HTTP clients unpack the download. A name with no known
extension gets no Content-Type, so the server's default applies (S3: ``binary/octet-stream``).

Patterns are gitignore-style (pathspec's git matching, as ``ignore`` uses): ``*.html`` matches
at any depth, ``assets/**`` everything below ``assets`` at the root, ``/index.html`` only at the root.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from functools import lru_cache

import pathspec

from .choices import ContentTypeMode
from .config import FolderConfig
from .store import NO_HEADERS
from .validators import HeaderRule

# The table is read lazily on first use, and that first read is not thread-safe: do it now.
mimetypes.init()


def guess_content_type(relpath: str) -> str | None:
    """The Content-Type ``aws s3 sync`` would send for this name, or None."""
    try:
        return mimetypes.guess_type(relpath, strict=True)[0]
    except UnicodeDecodeError:  # a broken system MIME table (aws-cli guards against it too)
        return None


@lru_cache(maxsize=64)
def _compiled(rules: tuple[HeaderRule, ...]) -> tuple[tuple[pathspec.GitIgnoreSpec, dict[str, str]], ...]:
    return tuple((pathspec.GitIgnoreSpec.from_lines([r.pattern]), dict(r.headers)) for r in rules)


def object_headers(folder: FolderConfig, relpath: str) -> Mapping[str, str]:
    """The headers an object for ``relpath`` is written with: the guessed Content-Type (unless
    ``content_type: none``), overridden by the first ``headers`` rule matching the path."""
    out: dict[str, str] = {}
    if folder.content_type == ContentTypeMode.AUTO:
        guessed = guess_content_type(relpath)
        if guessed is not None:
            out["Content-Type"] = guessed
    for spec, headers in _compiled(folder.headers):
        if spec.match_file(relpath):
            out.update(headers)
            break
    return out if out else NO_HEADERS
