# Rendered by `joblife nomad render` from joblife's settings, job types and flavor
# catalogue. Change those and render again rather than editing this file.

client {
  enabled    = true
  node_class = "small"
  meta = {
    joblife_flavor = "small"
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
