"""Parses every /metrics endpoint given with the reference Prometheus parser (prometheus_client).

Usage: metrics_parse.py URL [URL ...]  (PLEXUS_METRICS_KEY: bearer key for URLs that need one)

Each body is parsed as OpenMetrics when its content type says so (a missing `# EOF`, a bad
line or a duplicate family is an error), else as the Prometheus text format. Prints JSON:
{url: {family: [[sample name, labels, value], ...]}}. Exits non-zero on any parse error.
"""

import json
import os
import ssl
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus


def fetch(url):
    request = urllib.request.Request(url)
    key = os.environ.get("PLEXUS_METRICS_KEY")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    # Providers serve TLS with a certificate for their chain key, not a CA's: this check is
    # about the exposition format, so it does not verify the certificate (the gateway pins it).
    context = ssl._create_unverified_context()
    with urllib.request.urlopen(request, timeout=30, context=context) as response:
        return response.headers.get("Content-Type", ""), response.read().decode("utf-8")


def main(urls):
    out = {}
    for url in urls:
        content_type, text = fetch(url)
        parse = parse_openmetrics if "openmetrics" in content_type else parse_prometheus
        try:
            families = list(parse(text))
        except Exception as e:  # the parser raises ValueError and friends
            print(f"{url}: not valid {'OpenMetrics' if parse is parse_openmetrics else 'Prometheus text'}: {e}", file=sys.stderr)
            return 1
        out[url] = {f.name: [[s.name, s.labels, s.value] for s in f.samples] for f in families}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
