{
  "targets": [
    {
      "target_name": "crest_native",
      "sources": ["native/crest.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror"]
    }
  ]
}
