from mediasvc.cli import main

main()
