"""Price sources: `aws` against moto's real EC2 server on 127.0.0.1 (API plumbing only: moto
answers a placeholder price), `file` on a slice of the real eu-west-1 history."""

import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.domain.pricing import PriceSeries
from controller.drivers.prices import AwsPriceSource, FilePriceSource, read_history
from controller.errors import ConfigError
from tests.conftest import free_port, wait_until

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "spot-prices"
EU = DATA / "aws-spot-eu-west-1_2022-03-09_2022-06-07.tsv.xz"
ALL = DATA / "aws-spot-all-regions_2022-05-31_6h.tsv"
needs_data = pytest.mark.skipif(not EU.exists(), reason=f"price histories not found in {DATA}")


@pytest.fixture(scope="module")
def moto_url():
    """moto's EC2 server on 127.0.0.1, a random port, fake credentials."""
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    url = f"http://127.0.0.1:{port}"
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")

    def up():
        try:
            boto3.client("ec2", region_name="eu-west-1", endpoint_url=url).describe_regions()
            return True
        except Exception:
            return False

    try:
        wait_until(up, 30, 0.2, "moto's server")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_aws_source_reads_describe_spot_price_history(moto_url):
    clock = [1_000.0]
    src = AwsPriceSource("eu-west-1", ["c5.large", "c5.xlarge"], endpoint_url=moto_url,
                         refresh=300, clock=lambda: clock[0])
    prices = src.prices(clock[0])
    assert src.error is None
    # moto: every zone of the region, the VPC product name, a placeholder price
    assert {"c5.large/eu-west-1a", "c5.xlarge/eu-west-1b"} <= set(prices)
    assert all(k.split("/")[0] in ("c5.large", "c5.xlarge") for k in prices)
    assert set(prices.values()) == {0.00001}
    fetched = src.fetched_at
    assert src.prices(clock[0] + 100) == prices and src.fetched_at == fetched  # cached
    src.prices(clock[0] + 301)
    assert src.fetched_at == clock[0] + 301  # refreshed after the period


def test_aws_source_keeps_the_last_prices_when_the_api_fails(moto_url):
    src = AwsPriceSource("eu-west-1", ["c5.large"], endpoint_url=moto_url, refresh=10)
    first = src.prices(0.0)
    src.client = AwsPriceSource("eu-west-1", ["c5.large"], refresh=10,
                                endpoint_url=f"http://127.0.0.1:{free_port()}").client
    assert src.prices(20.0) == first
    assert src.error and "not refreshed" in src.error


def test_aws_source_ignores_other_products(moto_url):
    src = AwsPriceSource("eu-west-1", ["c5.large"], product="Windows", endpoint_url=moto_url)
    assert src.prices(0.0) == {}


@needs_data
def test_file_source_on_a_slice_of_the_real_history(tmp_path):
    # the first 3,000 rows (newest first) of the real file, as an xz slice
    part = tmp_path / "slice.tsv.xz"
    with lzma.open(EU, "rt") as f, lzma.open(part, "wt") as out:
        rows = [next(f) for _ in range(3000)]
        out.writelines(rows)
    mine = [r.split("\t") for r in rows if "\tLinux/UNIX\t" in r and "\tc5.large\t" in r]
    assert mine, "the slice holds c5.large Linux rows"
    series = read_history(part, {"c5.large"})
    assert set(series) == {f"c5.large/{r[5].strip()}" for r in mine}
    key = f"c5.large/{mine[0][5].strip()}"
    s = series[key]
    assert list(s.times) == sorted(s.times)  # newest-first rows became ascending steps
    newest = float(mine[0][1])
    assert s.prices[-1] == newest and s.at(s.times[-1] + 3600) == newest
    assert all("SUSE" not in k and "Windows" not in k for k in series)
    src = FilePriceSource(series)
    assert src.prices(5_000.0)[key] == s.prices[0]  # the replay starts at the window's start


@needs_data
def test_file_source_reads_the_all_regions_layout():
    series = read_history(ALL, {"m5.large"})
    assert series and all(k.startswith("m5.large/") for k in series)
    assert all(isinstance(s, PriceSeries) and s.prices[0] > 0 for s in series.values())


def test_file_source_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_history(tmp_path / "nope.tsv")
    empty = tmp_path / "e.tsv"
    empty.write_text("")
    with pytest.raises(ConfigError, match="no prices"):
        FilePriceSource(read_history(empty))
