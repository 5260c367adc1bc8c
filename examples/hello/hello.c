// hello: prints its arguments and the HELLO environment variable.
//
//   submit run --local examples/hello/hello.wasm -e HELLO=world -- shoal fleet
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    printf("hello from %s\n", argv[0]);
    for (int i = 1; i < argc; i++) {
        printf("arg[%d] = %s\n", i, argv[i]);
    }
    const char *hello = getenv("HELLO");
    printf("HELLO = %s\n", hello ? hello : "(unset)");
    return 0;
}
