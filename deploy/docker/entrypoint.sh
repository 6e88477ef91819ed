#!/bin/sh
# Entry point of the instant-orders image (deploy/Dockerfile): the first argument chooses the
# service to run.
set -e
case "${1:-api}" in
  api | inventory | fulfilment)
    exec python -m "services.$1"
    ;;
  migrate)
    instant-orders db migrate
    exec instant-orders kafka bootstrap
    ;;
  *)
    exec "$@"
    ;;
esac
