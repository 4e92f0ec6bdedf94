/*
 * page.h - the live page (gateway/page/index.html), embedded at build time
 * by cmake/embed.cmake. NUL-terminated; page_html_len excludes the NUL.
 */
#ifndef RACE2MQTT_PAGE_H
#define RACE2MQTT_PAGE_H

#include <stddef.h>

extern const unsigned char page_html[];
extern const size_t page_html_len;

#endif
