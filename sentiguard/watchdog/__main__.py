from sentiguard.watchdog.process import main

main()
