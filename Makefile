# The two commands of the README, plus benchmarks.
.PHONY: demo test bench install dist cross
demo:
	./.ci/demo.sh
test:
	./.ci/test.sh
bench:
	./bench/run-all.sh
install:
	PREFIX=$(or $(PREFIX),/usr/local) DESTDIR=$(DESTDIR) ./.ci/install.sh
dist:
	./.ci/release.sh
cross:
	./.ci/cross.sh release
