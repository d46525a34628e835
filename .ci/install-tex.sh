#!/usr/bin/env bash
# TeX Live from Debian's packages, for compiling and looking at the derivation documents.
set -euo pipefail
packages=(texlive-latex-base texlive-latex-recommended latexmk poppler-utils)
if command -v pdflatex >/dev/null && command -v latexmk >/dev/null && command -v pdftoppm >/dev/null; then
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
