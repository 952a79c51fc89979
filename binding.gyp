{
  "targets": [
    {
      "target_name": "crest_native",
      "sources": ["native/crest.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror"],
      "conditions": [
        ["'<!(test -f /usr/include/zstd.h && echo yes || echo no)'=='yes'", {
          "defines": ["CREST_HAVE_ZSTD"],
          "libraries": ["-lzstd"]
        }]
      ]
    }
  ]
}
