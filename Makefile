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
# Two tests at once fill the 2 cores; libtorch's own threads on top spin against each
# other (tests/training.rs took 1,004 s in one CI run, 102 s on one thread each), so
# every process the suite starts trains on one thread unless OMP_NUM_THREADS is set.
# All of them: a Slurm job and the build it is compared with must agree on it.
test: setup
	@scripts/test-deps.sh
	$(ENV) OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} cargo test --release --locked -- --test-threads=2

bench: setup
	$(ENV) cargo bench --locked
