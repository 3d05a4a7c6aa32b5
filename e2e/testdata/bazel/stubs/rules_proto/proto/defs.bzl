"""Offline stand-in for rules_proto: each macro forwards to the native rule built into Bazel 4.2."""

def proto_library(**kw):
    native.proto_library(**kw)

def proto_lang_toolchain(**kw):
    native.proto_lang_toolchain(**kw)
