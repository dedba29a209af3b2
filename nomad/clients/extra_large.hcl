# Rendered by `joblife nomad render` from joblife's settings, job types and flavor
# catalogue. Change those and render again rather than editing this file.

client {
  enabled    = true
  node_class = "extra_large"
  meta = {
    joblife_flavor = "extra_large"
  }
}

plugin "docker" {
  config {
    volumes {
      enabled = true
    }

    gc {
      image       = true
      image_delay = "1h"
    }
  }
}
