# Shared by scripts/main.sh and scripts/test.sh (sourced, not run).

# pip-install the package with `extras` (e.g. ".[cli]"), showing the Rust build's progress:
# one line per compiled crate instead of pip's silence.
install_quantbridge() {
    echo "quantbridge: building the Rust extension and installing $1"
    echo "  (a release build: about 3-5 minutes on 2 cores the first time, seconds after that)"
    python3 -m pip install -v "$1" 2>&1 | sed -u -n \
        -e 's/^ *\(Compiling [^ ]* v[^ ]*\).*/  \1/p' \
        -e 's/^ *\(Finished .*\)/  \1/p' \
        -e 's/^\(Successfully installed .*\)/  \1/p' \
        -e '/^\(ERROR\|error\)/p'
}
