"""The closed vocabularies of a folder's configuration.

:mod:`syncd.config` accepts exactly these values (YAML spells them as the members' values)
and stores the members, so the rest of the pipeline compares members, never bare strings.
"""

from __future__ import annotations

from enum import StrEnum


class DeleteMode(StrEnum):
    """``delete``: what a local deletion does to the bucket."""

    MIRROR = "mirror"    # deletions propagate
    KEEP = "keep"        # never delete remotely
    TRASH = "trash"      # deletions propagate, but the object is first copied into the trash

    @property
    def propagates(self) -> bool:
        """A local deletion removes the object from the mirror (mirror and trash do)."""
        return self is not DeleteMode.KEEP


class Checksum(StrEnum):
    """``checksum``: the per-request integrity check (S3-compatible stores differ)."""

    SHA256 = "sha256"
    CRC32C = "crc32c"
    MD5 = "md5"          # Content-MD5
    OFF = "off"          # none; the payload is signed instead


class AddressingStyle(StrEnum):
    """``addressing_style``: how the bucket is named in request URLs."""

    AUTO = "auto"        # virtual-hosted, path style for a dotted bucket name (as boto3 does)
    PATH = "path"
    VIRTUAL = "virtual"


class ContentTypeMode(StrEnum):
    """``content_type``: where an object's Content-Type comes from."""

    AUTO = "auto"        # guessed from the name, as `aws s3 sync` does
    NONE = "none"        # not set (the store's default), unless a `headers` rule sets it


class StoreKind(StrEnum):
    """``store``: which object store the folder mirrors into."""

    S3 = "s3"            # S3 or an S3-compatible endpoint (syncd.s3store)
    AZURE = "azure"      # Azure Blob Storage: bucket = container (syncd.azurestore)
