from benchmarks.run import main

if __name__ == "__main__":  # not again in a child that loads this module as __mp_main__ (anyio.to_process)
    raise SystemExit(main())
