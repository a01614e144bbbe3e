# The two commands a new user needs: `make demo` and `make test`. Both set up first.
SHELL := /bin/bash
ENV := . scripts/env.sh &&

.PHONY: setup demo test bench clean-cache
setup:
	@scripts/setup.sh

demo: setup
	target/release/effectc build brick
	@echo "demo: open out/brick/bundle-report.html (contact sheet: out/brick/bundle-contact-sheet.png; bundle: out/brick/bundle-bundle.tar.gz)"

# Tests run in the release profile so they reuse the dependencies `make setup` compiled
# for target/release/effectc: a fresh clone compiles each dependency once, not twice.
test: setup
	@scripts/test-deps.sh
	$(ENV) cargo test --release --locked -- --test-threads=2

bench: setup
	$(ENV) cargo bench --locked
