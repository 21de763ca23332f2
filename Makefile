# The two commands of the README, plus benchmarks.
.PHONY: demo test bench
demo:
	./.ci/demo.sh
test:
	./.ci/test.sh
bench:
	./bench/run-all.sh
