"""TFDS datasets without surprises offline: use a prepared dataset, or fail in seconds.

TFDS retries an unreachable host for minutes and then dies deep in its downloader with a long
traceback. `prepare_tfds` uses a dataset already prepared in the data dir without any network,
and otherwise checks each download's host before the download starts, so a machine without
network, a missing manual download or a failed download ends in one `DatasetUnavailableError`
naming the dataset, the directory looked in and the ways out.
"""

import contextlib
import os
import socket
from unittest import mock
from urllib import parse as urlparse, request as urlrequest

from proxy_jax.core.errors import DataError


class DatasetUnavailableError(DataError):
  """A TFDS dataset is not prepared here and cannot be downloaded or built now (main.py prints
  it as one line)."""


# Seconds to wait for each download host to answer before calling the network unreachable.
PROBE_TIMEOUT_S = 3.0


def _unavailable(builder, reason: str) -> DatasetUnavailableError:
  name, root = builder.name, os.fspath(builder.data_dir_root)
  manual = os.path.join(root, "downloads", "manual")
  return DatasetUnavailableError(
    f"TFDS dataset {name!r} is not prepared in {root} and {reason}. Either run `tfds build "
    f"{name} --data_dir=DIR` on a machine with network and copy DIR/{name} to "
    f"{os.path.join(root, name)} (or set config.data.tfds_data_dir=DIR), or place its "
    f"downloaded archives in {manual} (the TFDS catalog page of {name} lists them)"
  )


def _unreachable_hosts(urls) -> list[str]:
  """Download hosts (or the proxies in front of them) that do not accept a connection."""
  unreachable = set()
  for url in sorted(urls):
    parsed = urlparse.urlsplit(url)
    proxy = urlrequest.getproxies().get(parsed.scheme)
    if proxy and not urlrequest.proxy_bypass(parsed.hostname or ""):
      parsed = urlparse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    port = parsed.port or {"https": 443, "ftp": 21}.get(parsed.scheme, 80)
    address = f"{parsed.hostname}:{port}"
    if address in unreachable:
      continue
    try:
      socket.create_connection((parsed.hostname, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError:
      unreachable.add(address)
  return sorted(unreachable)


def prepare_tfds(builder) -> None:
  """Downloads and prepares a TFDS dataset unless it is prepared already, failing in seconds.

  TFDS retries an unreachable host for minutes and then dies deep in its downloader. Instead,
  each real download (an archive neither cached nor placed in the manual dir) first checks
  that its host accepts a connection, and a missing manual download, an unreachable host or a
  failed download becomes one `DatasetUnavailableError` that says what to do.
  """
  if builder.is_prepared():
    return
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    manual = os.path.join(os.fspath(builder.data_dir_root), "downloads", "manual")
    if not os.path.isdir(manual) or not os.listdir(manual):
      raise _unavailable(builder, f"needs a manual download, but {manual} is empty")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tf.config.set_visible_devices([], "GPU")  # Preparing runs TensorFlow: keep it off the GPUs.
  try:
    with _probed_downloads():
      builder.download_and_prepare()
  except (OSError, AssertionError) as error:  # requests' errors are OSErrors; manual: Assertion.
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    raise _unavailable(
      builder, f"preparing it failed ({type(error).__name__}: {first_line})"
    ) from error


@contextlib.contextmanager
def _probed_downloads():
  """While active, TFDS checks a download's host before it starts the (retrying) download.

  `DownloadManager._download` is where TFDS starts a download that no cache or manual file can
  serve; where a TFDS version lacks it, downloads run unprobed (slow, but still correct).
  """
  from tensorflow_datasets.core.download import download_manager  # pylint: disable=g-import-not-at-top

  manager = download_manager.DownloadManager
  original = getattr(manager, "_download", None)
  if original is None:
    yield
    return

  def probed(self, resource):
    unreachable = _unreachable_hosts([resource.url])
    if unreachable:
      raise ConnectionError(f"{', '.join(unreachable)} cannot be reached (no network?)")
    return original(self, resource)

  with mock.patch.object(manager, "_download", probed):
    yield
