from .proxy import main

main()
