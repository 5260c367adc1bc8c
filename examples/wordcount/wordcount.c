// wordcount: counts the lines, words and bytes of the file named by its first
// argument, prints them and writes them to /outputs/result.txt.
//
//   submit run --local examples/wordcount/wordcount.wasm \
//       -i examples/wordcount/sample.txt:/inputs/sample.txt /inputs/sample.txt
#include <ctype.h>
#include <stdio.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: wordcount FILE\n");
        return 2;
    }
    FILE *in = fopen(argv[1], "rb");
    if (!in) {
        perror(argv[1]);
        return 1;
    }
    long lines = 0, words = 0, bytes = 0;
    int in_word = 0, c;
    while ((c = fgetc(in)) != EOF) {
        bytes++;
        if (c == '\n') lines++;
        if (isspace(c)) {
            in_word = 0;
        } else if (!in_word) {
            in_word = 1;
            words++;
        }
    }
    fclose(in);
    printf("%ld %ld %ld %s\n", lines, words, bytes, argv[1]);
    FILE *out = fopen("/outputs/result.txt", "w");
    if (!out) {
        perror("/outputs/result.txt");
        return 1;
    }
    fprintf(out, "lines %ld\nwords %ld\nbytes %ld\n", lines, words, bytes);
    return fclose(out) == 0 ? 0 : 1;
}
