#!/usr/bin/env bash
# Sourced by scripts/test.sh: make sure Debian's chromium is installed for
# tests/test_site_offline.py, which opens the built site in it with networking off. Installs
# it with apt-get when it is missing and we are root; otherwise that test skips and says why.
# Never fatal: the rest runs either way. (Playwright drives it; its own browsers are never
# downloaded.)
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing chromium with apt-get (for the offline site test)"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null; then
            echo "== could not install chromium: tests/test_site_offline.py will be skipped"
        fi
    else
        echo "== chromium not found: tests/test_site_offline.py will be skipped" \
             "(install it, e.g. 'sudo apt-get install chromium')"
    fi
fi
