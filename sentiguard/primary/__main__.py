from sentiguard.primary.process import run

run()
