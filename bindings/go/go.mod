module github.com/libtribe/libtribe/bindings/go

go 1.24
