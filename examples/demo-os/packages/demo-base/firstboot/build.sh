# Install the init and first-boot scripts; /usr/sbin/init starts the demo
# init.
install -Dm0755 init "$DESTDIR$PREFIX/lib/demo/init"
install -Dm0755 firstboot "$DESTDIR$PREFIX/lib/demo/firstboot"
mkdir -p "$DESTDIR$PREFIX/sbin"
ln -s ../lib/demo/init "$DESTDIR$PREFIX/sbin/init"
