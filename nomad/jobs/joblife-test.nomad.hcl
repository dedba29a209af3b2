# Rendered by `joblife nomad render` from joblife's settings, job types and flavor
# catalogue. Change those and render again rather than editing this file.

job "joblife-test" {
  type        = "batch"
  datacenters = ["*"]

  meta {
    joblife_job_type = "test"
    joblife_flavor   = "extra_small"
  }

  parameterized {
    payload       = "forbidden"
    meta_required = ["job_id", "attempt"]
    meta_optional = ["attempt_secret"]
  }

  group "worker" {
    count = 1

    constraint {
      attribute = "${node.class}"
      value     = "extra_small"
    }

    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    ephemeral_disk {
      size = 20480
    }

    task "worker" {
      driver = "docker"

      config {
        image   = "joblife/worker:latest"
        command = "joblife"
        args    = ["worker", "run", "${NOMAD_META_job_id}", "--attempt", "${NOMAD_META_attempt}"]
        volumes = ["/var/run/docker.sock:/var/run/docker.sock"]
      }

      template {
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/joblife" -}}
          {{- range $key, $value := . }}
          {{- if eq $key "worker_database_url" }}
          JOBLIFE_DATABASE_URL={{ $value.Value | toJSON }}
          {{- else if not (eq $key "amqp_url" "attempt_secret_key" "database_url" "nomad_token") }}
          JOBLIFE_{{ $key | toUpper }}={{ $value.Value | toJSON }}
          {{- end }}
          {{- end }}
          {{- end }}
          EOT
        destination = "${NOMAD_SECRETS_DIR}/joblife.env"
        env         = true
        change_mode = "noop"
      }

      env {
        JOBLIFE_DATA_DIR = "${NOMAD_ALLOC_DIR}/joblife"
      }

      resources {
        cores  = 1
        memory = 2048
      }

      kill_timeout = "30s"
    }
  }
}
